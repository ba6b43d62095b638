//! JSON-lines access log, written by a dedicated thread so the request path never blocks on a
//! disk or a slow stdout: lines go through a bounded channel and are dropped (and counted) when
//! the writer falls behind, rather than stalling requests.
//!
//! A line is a [`Line`] of borrowed facts serialized straight into its buffer. Building a
//! `serde_json::Value` first (a map of owned keys and values, sorted, then walked) cost more
//! than a whole cache hit: 27,500 instructions per request against 18,000 for the hit.

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::{Serialize, Serializer};

const QUEUE_LINES: usize = 16 * 1024;

pub struct AccessLog {
    spec: String,
    tx: Option<SyncSender<Vec<u8>>>,
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
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(64 * 1024, sink);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(&line);
                    loop {
                        match rx.try_recv() {
                            Ok(line) => {
                                let _ = out.write_all(&line);
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

    /// Queues one line.
    pub fn write(&self, line: &Line<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut text = Vec::with_capacity(LINE_CAPACITY);
        serde_json::to_writer(&mut text, line).expect("a line serializes into memory");
        text.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(text) {
            self.dropped.inc();
        }
    }
}

/// Enough for a typical line, so it is written without growing.
const LINE_CAPACITY: usize = 512;

/// One request's access log line. The fields are in alphabetical order, as the lines have
/// always been written (they were a sorted map).
#[derive(Serialize)]
pub struct Line<'a> {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cache: Option<&'a str>,
    pub client_ip: IpAddr,
    pub completed: bool,
    pub duration_ms: f64,
    pub error: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub pop: &'a str,
    pub rate_limited: Option<&'a str>,
    pub retries: u32,
    pub site: &'a str,
    pub status: u16,
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// 32 lowercase hex digits.
    #[serde(serialize_with = "ascii")]
    pub trace_id: [u8; 32],
    pub upstream: Option<&'a str>,
    pub upstream_ms: Option<f64>,
    pub waf: Option<WafLine<'a>>,
}

/// The WAF rule a request matched.
#[derive(Serialize)]
pub struct WafLine<'a> {
    /// `block` or `detect`.
    pub action: &'a str,
    pub location: &'a str,
    pub rule: &'a str,
    pub value: &'a str,
}

fn rfc3339_millis<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

fn ascii<S: Serializer>(digits: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(std::str::from_utf8(digits).map_err(serde::ser::Error::custom)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(waf: Option<WafLine<'static>>) -> Line<'static> {
        Line {
            bytes_in: 5,
            bytes_out: 1024,
            cache: Some("hit"),
            client_ip: "2001:db8::7".parse().unwrap(),
            completed: true,
            duration_ms: 0.278,
            error: None,
            method: "GET",
            path: "/a \"quoted\" path\u{7f}",
            pop: "fra-1",
            rate_limited: Some("per-ip"),
            retries: 1,
            site: "shop",
            status: 200,
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_990_307_520),
            trace_id: *b"4bf92f3577b34da6a3ce929d0e0e4736",
            upstream: None,
            upstream_ms: Some(0.1),
            waf,
        }
    }

    /// The lines read as they did when they were built as a `serde_json::Value`: the same
    /// fields, values and order, byte for byte.
    #[test]
    fn a_line_is_written_as_the_sorted_json_object_it_always_was() {
        let waf = WafLine {
            action: "detect",
            location: "query",
            rule: "sqli-1",
            value: "1' or '1'='1",
        };
        for waf in [None, Some(waf)] {
            let with_waf = waf.is_some();
            let mut written = Vec::new();
            serde_json::to_writer(&mut written, &line(waf)).unwrap();
            let expected = serde_json::json!({
                "time": "2025-12-06T03:05:07.520Z",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "pop": "fra-1",
                "site": "shop",
                "method": "GET",
                "path": "/a \"quoted\" path\u{7f}",
                "status": 200,
                "bytes_in": 5,
                "bytes_out": 1024,
                "duration_ms": 0.278,
                "upstream_ms": 0.1,
                "upstream": null,
                "retries": 1,
                "client_ip": "2001:db8::7",
                "completed": true,
                "error": null,
                "rate_limited": "per-ip",
                "cache": "hit",
                "waf": with_waf.then(|| serde_json::json!({
                    "rule": "sqli-1",
                    "action": "detect",
                    "location": "query",
                    "value": "1' or '1'='1",
                })),
            });
            assert_eq!(String::from_utf8(written).unwrap(), expected.to_string());
        }
    }
}
