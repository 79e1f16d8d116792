use hutong::client::{Consumer, Producer, ProducerConfig, StartFrom};
use std::time::Duration;

fn main() -> Result<(), hutong::client::ClientError> {
    let addr = "127.0.0.1:7070"; // topic `orders` must exist
    let producer = Producer::connect(addr, ProducerConfig::default())?;
    let receipt = producer.send_records("orders", 0, &[(b"k1", b"hello")])?;
    println!("stored at offset {}", receipt.wait()?.base_offset);
    let mut consumer = Consumer::connect(addr, "orders", 0, StartFrom::Earliest)?;
    for r in consumer.poll(Duration::from_secs(1))? {
        println!("{}: {}", r.offset, String::from_utf8_lossy(&r.value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The README shows this file's program verbatim, so what readers copy
    /// is what `make test` compiles.
    #[test]
    fn readme_shows_this_example() {
        let here = env!("CARGO_MANIFEST_DIR");
        let readme = std::fs::read_to_string(format!("{here}/../../README.md")).unwrap();
        let source = std::fs::read_to_string(format!("{here}/src/main.rs")).unwrap();
        let program = source.split("\n#[cfg(test)]").next().unwrap();
        assert!(
            readme.contains(program),
            "README.md must show examples/client-only/src/main.rs up to its tests"
        );
    }
}
