//! The one line `wsscale serve` prints on stdout once its listeners are bound, so that
//! whatever started it with port 0 (compare, the tests, the scripts) learns where it
//! listens:
//!
//! ```text
//! listening url=ws://127.0.0.1:40123/ws metrics=http://127.0.0.1:40124/metrics mode=tasks engine=lean
//! ```
//!
//! `key=value` fields after the word `listening`, separated by single spaces; values hold
//! no spaces. Readers take the fields they know and ignore the others, so a field can be
//! added without breaking them. Written and parsed here only ([`StartLine`]'s `Display`
//! and `FromStr`); scripts/lib.sh reads the same fields by name.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// The first word of the line.
const FIRST_WORD: &str = "listening";

/// What a server announces at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartLine {
    /// Where WebSocket clients connect: `ws://ADDR/ws`.
    pub url: String,
    /// The WebSocket listener's bound address (the authority of `url`).
    pub ws_addr: SocketAddr,
    /// The metrics listener's bound address (`metrics=http://ADDR/metrics`).
    pub metrics_addr: SocketAddr,
    /// Further fields, in order (`mode`, `engine`, ...).
    pub fields: Vec<(String, String)>,
}

impl StartLine {
    /// The line of a server speaking `scheme` (ws or wss) on `ws_addr`, with its metrics
    /// on `metrics_addr`, and `fields`.
    pub fn new(scheme: &str, ws_addr: SocketAddr, metrics_addr: SocketAddr, fields: Vec<(String, String)>) -> Self {
        StartLine {
            url: format!("{scheme}://{ws_addr}/ws"),
            ws_addr,
            metrics_addr,
            fields,
        }
    }

    /// A further field's value.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(known, _)| known == key)
            .map(|(_, value)| value.as_str())
    }
}

impl fmt::Display for StartLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{FIRST_WORD} url={} metrics=http://{}/metrics",
            self.url, self.metrics_addr
        )?;
        for (key, value) in &self.fields {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

/// Why a line is not a start line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a wsscale start line ({why}): {line:?}")]
pub struct NotAStartLine {
    why: &'static str,
    line: String,
}

impl FromStr for StartLine {
    type Err = NotAStartLine;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let fail = |why| NotAStartLine {
            why,
            line: line.to_owned(),
        };
        let mut words = line.trim_end().split(' ');
        if words.next() != Some(FIRST_WORD) {
            return Err(fail("it does not start with \"listening\""));
        }
        let (mut url, mut metrics, mut fields) = (None, None, Vec::new());
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| fail("a field without '='"))?;
            match key {
                "url" => url = Some(value.to_owned()),
                "metrics" => metrics = Some(value.to_owned()),
                _ => fields.push((key.to_owned(), value.to_owned())),
            }
        }
        let url = url.ok_or_else(|| fail("no url"))?;
        let metrics = metrics.ok_or_else(|| fail("no metrics"))?;
        let authority = |text: &str, scheme: &str| -> Option<SocketAddr> {
            text.strip_prefix(scheme)?.split('/').next()?.parse().ok()
        };
        Ok(StartLine {
            ws_addr: authority(&url, "ws://")
                .or_else(|| authority(&url, "wss://"))
                .ok_or_else(|| fail("url is not ws://ADDR/... or wss://ADDR/..."))?,
            metrics_addr: authority(&metrics, "http://").ok_or_else(|| fail("metrics is not http://ADDR/..."))?,
            url,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_as_written() {
        let line = StartLine::new(
            "ws",
            "127.0.0.1:40123".parse().unwrap(),
            "[::1]:9100".parse().unwrap(),
            vec![("mode".into(), "tasks".into()), ("engine".into(), "lean".into())],
        );
        let text = line.to_string();
        assert_eq!(
            text,
            "listening url=ws://127.0.0.1:40123/ws metrics=http://[::1]:9100/metrics mode=tasks engine=lean"
        );
        assert_eq!(text.parse::<StartLine>().unwrap(), line);
        assert_eq!(line.field("engine"), Some("lean"));
        assert_eq!(line.field("scheme"), None);
    }

    #[test]
    fn unknown_fields_are_kept_and_missing_ones_refused() {
        let line: StartLine = "listening future=1 url=wss://127.0.0.1:1/ws metrics=http://127.0.0.1:2/metrics\n"
            .parse()
            .unwrap();
        assert_eq!(line.ws_addr.port(), 1);
        assert_eq!(line.field("future"), Some("1"));
        for bad in [
            "",
            "Error: address in use",
            "listening url=ws://127.0.0.1:1/ws",
            "listening metrics=http://127.0.0.1:2/metrics url=http://x/ws",
            "listening url ws://127.0.0.1:1/ws",
        ] {
            assert!(bad.parse::<StartLine>().is_err(), "{bad:?}");
        }
    }
}
