//! Progress bars on a terminal (indicatif), nothing otherwise. Implements the library's
//! `Progress` trait.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kura_repo::progress::Progress;

pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar when stderr is a terminal and output is for humans.
    pub fn new(quiet: bool, json: bool) -> Bar {
        if quiet || json || !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar: Some(bar) }
    }

    /// Print a line without tearing the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: Option<u64>) {
        if let Some(b) = &self.bar {
            b.set_message(phase.to_string());
            b.set_length(total.unwrap_or(0));
            b.set_position(0);
        }
    }

    fn add_total(&self, bytes: u64, _items: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
        }
    }

    fn advance(&self, bytes: u64, _items: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn warn(&self, msg: &str) {
        self.println(&format!("warning: {msg}"));
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
