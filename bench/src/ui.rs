//! The progress bar: on stderr, only when stderr is a terminal and the run
//! is not `--quiet`, so piped output and `--json` consumers see none of it.

use crate::Common;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// How often a running scenario refreshes its progress bar.
pub const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// Output settings shared by the scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    progress: bool,
}

impl Ui {
    /// Shows progress only on an interactive stderr and without `--quiet`.
    pub fn new(common: &Common) -> Ui {
        Ui {
            progress: !common.quiet && std::io::stderr().is_terminal(),
        }
    }

    /// No progress output at all.
    #[cfg(test)]
    pub fn hidden() -> Ui {
        Ui { progress: false }
    }

    /// A bar counting `total` units of `unit` (a hidden one when progress is
    /// off, so callers update it unconditionally).
    pub fn bar(&self, label: &str, total: u64, unit: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = format!(
            "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        bar
    }

    /// A bar for a run bounded by time rather than by a count.
    pub fn spinner(&self, label: &str, unit: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let template = format!(
            "{{prefix}} [{{elapsed_precise}}] {{spinner}} {{human_pos}} {unit} ({{per_sec}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        bar
    }
}
