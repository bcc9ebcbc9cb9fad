//! Writes every target's seeds into `corpus/<target>/seed-<n>` (`scripts/fuzz.sh` runs it
//! before fuzzing, so libFuzzer starts from valid inputs of today's formats).
#![forbid(unsafe_code)]

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let corpus = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (name, _) in skoala_fuzz::TARGETS {
        let dir = corpus.join(name);
        std::fs::create_dir_all(&dir)?;
        for (n, seed) in skoala_fuzz::seeds::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed)?;
        }
    }
    Ok(())
}
