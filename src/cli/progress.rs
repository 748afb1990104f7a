//! Progress rendering: an indicatif bar with bytes and rate on a terminal,
//! plain lines otherwise, nothing with --json.

use std::io::IsTerminal;
use std::sync::Arc;

use i2kit::fetch::{Event, EventSink};
use indicatif::{ProgressBar, ProgressStyle};

/// Build an event sink for the fetch stage.
pub fn sink(json: bool) -> (EventSink, Option<ProgressBar>) {
    if json {
        return (i2kit::fetch::no_events(), None);
    }
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message("pulling");
        let b = bar.clone();
        let sink: EventSink = Arc::new(move |e: &Event| match e {
            Event::BlobStart { size, .. } => b.inc_length(*size),
            Event::BlobBytes { bytes, .. } => b.inc(*bytes),
            Event::BlobReset { .. } => {}
            Event::Resolved { reference, .. } => b.set_message(format!("resolved {reference}")),
            Event::BlobDone { .. } => {}
        });
        (sink, Some(bar))
    } else {
        let sink: EventSink = Arc::new(|e: &Event| match e {
            Event::BlobStart { digest, size } => eprintln!("fetching {digest} ({size} bytes)"),
            Event::BlobReset { digest, offset } => {
                eprintln!("retrying {digest} from byte {offset}")
            }
            _ => {}
        });
        (sink, None)
    }
}
