//! Progress for long operations, on stderr so stdout stays clean for output and `--json`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::ingest::{IngestProgress, Phase, ProgressSnapshot};

/// How often the terminal display is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(200);
/// How often a log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Runs `work` (an ingestion updating `progress`) while showing its progress: on a terminal,
/// a bar over the file's bytes with the phase (reading and validating, sealing, handing on),
/// rows read and checked, rows/s and an estimate of the time left; otherwise a log line
/// every [`LOG_EVERY`]. `handing` names what the sink does with a batch ("handing it to the
/// node"), shown while the sink has it.
pub fn watch_ingest<T>(
    file: &Path,
    progress: &IngestProgress,
    handing: &str,
    work: impl FnOnce() -> T,
) -> T {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let start = Instant::now();
            let terminal = std::io::stderr().is_terminal();
            let bar = terminal.then(|| {
                let bar = ProgressBar::new(0);
                bar.set_style(
                    ProgressStyle::with_template("{spinner} [{bar:24}] {percent:>3}% {wide_msg}")
                        .expect("static template")
                        .progress_chars("=> "),
                );
                bar
            });
            let every = if terminal { DRAW_EVERY } else { LOG_EVERY };
            loop {
                let done = !matches!(
                    stopped.recv_timeout(every),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                let now = progress.snapshot();
                let elapsed = start.elapsed();
                match &bar {
                    Some(bar) => {
                        bar.set_length(now.bytes_total.max(now.bytes_read).max(1));
                        bar.set_position(now.bytes_read);
                        bar.set_message(describe(&now, elapsed, handing));
                    }
                    None if !done => tracing::info!(
                        file = %file.display(),
                        "ingesting: {}",
                        describe(&now, elapsed, handing)
                    ),
                    None => {}
                }
                if done {
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    break;
                }
            }
        });
        let result = work();
        drop(stop);
        result
    })
}

/// One line of progress: phase, counts, rate, estimate.
pub fn describe(now: &ProgressSnapshot, elapsed: Duration, handing: &str) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let phase = match now.phase {
        Phase::Reading => "reading and validating".to_owned(),
        Phase::Sealing => format!("sealing batch {}", now.batches_sealed + 1),
        Phase::Handing => format!("batch {}: {handing}", now.batches_handed + 1),
        Phase::Done => "done".to_owned(),
    };
    // Most telling first: a narrow terminal cuts the end of the line.
    let mut line = format!("{phase} · {:.0} rows/s", now.rows_checked as f64 / seconds);
    if now.bytes_total > 0 {
        let done = now.bytes_read as f64 / now.bytes_total as f64;
        if done > 0.01 && now.phase != Phase::Done {
            let left = seconds * (1.0 - done) / done;
            line.push_str(&format!(" · about {} left", minutes_seconds(left)));
        }
    }
    line.push_str(&format!(
        " · {} rows read, {} checked · {} records in {} batch(es)",
        now.rows_read, now.rows_checked, now.records, now.batches_handed
    ));
    if now.bytes_total > 0 {
        line.push_str(&format!(
            " · {:.0} of {:.0} MB",
            now.bytes_read as f64 / 1e6,
            now.bytes_total as f64 / 1e6
        ));
    }
    line
}

fn minutes_seconds(seconds: f64) -> String {
    let total = seconds.round() as u64;
    if total >= 60 {
        format!("{}m{:02}s", total / 60, total % 60)
    } else {
        format!("{total}s")
    }
}
