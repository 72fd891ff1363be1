//! Progress for long operations, on stderr so stdout stays clean for output and `--json`.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner counting rows read; hidden when stderr is not a terminal.
pub struct Rows(ProgressBar);

impl Rows {
    pub fn new(file: &Path) -> Rows {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} rows ({per_sec})")
                .expect("static template"),
        );
        bar.set_message(file.display().to_string());
        Rows(bar)
    }

    pub fn update(&self, rows: u64) {
        self.0.set_position(rows);
    }

    pub fn finish(&self, rows: u64) {
        self.0.set_position(rows);
        self.0.finish_and_clear();
    }
}
