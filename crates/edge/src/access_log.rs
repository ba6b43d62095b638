//! JSON-lines access log, written by a dedicated thread so the request path never blocks on a
//! disk or a slow stdout: lines go through a bounded channel and are dropped (and counted) when
//! the writer falls behind, rather than stalling requests.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};

use prometheus_client::metrics::counter::Counter;

const QUEUE_LINES: usize = 16 * 1024;

pub struct AccessLog {
    spec: String,
    tx: Option<SyncSender<String>>,
    dropped: Counter,
}

impl AccessLog {
    /// `spec` is `"off"`, `"stdout"` or a file path (appended to, created if missing).
    pub fn open(spec: &str, dropped: Counter) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match spec {
            "off" => {
                return Ok(Self {
                    spec: spec.to_owned(),
                    tx: None,
                    dropped,
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(64 * 1024, sink);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    loop {
                        match rx.try_recv() {
                            Ok(line) => {
                                let _ = out.write_all(line.as_bytes());
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                let _ = out.flush();
                                return;
                            }
                        }
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })?;
        Ok(Self {
            spec: spec.to_owned(),
            tx: Some(tx),
            dropped,
        })
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line (a trailing newline is expected).
    pub fn write(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.inc();
            }
        }
    }
}
