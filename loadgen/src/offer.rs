//! `--offer-deflate`'s offer: what the generator sends in `Sec-WebSocket-Extensions`
//! ([`Offer`], parsed and checked when the run starts, so a bad value is refused before
//! anything opens) and whether the server's answer is one the generator can keep to
//! ([`Offer::check_response`]). The connection that follows is [`crate::deflate`]'s.

use std::fmt;
use std::str::FromStr;

/// What Chromium (and so every Chrome and Edge) offers on every WebSocket it opens, and
/// what `--offer-deflate` without a value offers.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// One permessage-deflate offer: the parameters of RFC 7692 §7.1, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value (any limit the server names is accepted).
    pub client_max_window_bits: Option<Option<u8>>,
}

impl FromStr for Offer {
    type Err = String;

    /// `permessage-deflate` followed by `; parameter[=value]`s. One offer only (no commas),
    /// no unknown or repeated parameter, window bits 8 to 15 (9 to 15 for the client's: zlib
    /// cannot compress with a window of 8).
    fn from_str(text: &str) -> Result<Offer, String> {
        if text.contains(',') {
            return Err("one offer only: leave out the comma and what follows it".into());
        }
        let mut parts = text.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err(format!(
                "must start with `permessage-deflate`, not {name:?} (e.g. `{BROWSER_OFFER}`)"
            ));
        }
        let mut offer = Offer::default();
        for parameter in parts {
            let (key, value) = match parameter.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim().trim_matches('"'))),
                None => (parameter, None),
            };
            let repeated = || Err(format!("{key} is given twice"));
            match (key.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) if offer.server_no_context_takeover => return repeated(),
                ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
                ("client_no_context_takeover", None) if offer.client_no_context_takeover => return repeated(),
                ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
                ("server_no_context_takeover" | "client_no_context_takeover", Some(_)) => {
                    return Err(format!("{key} takes no value"));
                }
                ("server_max_window_bits", _) if offer.server_max_window_bits.is_some() => return repeated(),
                ("server_max_window_bits", None) => {
                    return Err("server_max_window_bits needs a value, 8 to 15".into());
                }
                ("server_max_window_bits", Some(value)) => {
                    offer.server_max_window_bits = Some(window_bits(key, value, 8)?);
                }
                ("client_max_window_bits", _) if offer.client_max_window_bits.is_some() => return repeated(),
                ("client_max_window_bits", value) => {
                    offer.client_max_window_bits = Some(value.map(|value| window_bits(key, value, 9)).transpose()?);
                }
                ("", None) => return Err("an empty parameter (two `;` in a row, or one at the end)".into()),
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?}: RFC 7692 has server_no_context_takeover, \
                         client_no_context_takeover, server_max_window_bits=N and client_max_window_bits[=N]"
                    ));
                }
            }
        }
        Ok(offer)
    }
}

/// A window size: `least` (8 or 9) to 15, decimal.
fn window_bits(key: &str, value: &str, least: u8) -> Result<u8, String> {
    match value.parse::<u8>() {
        Ok(bits) if (least..=15).contains(&bits) && !value.starts_with('0') => Ok(bits),
        Ok(8) => Err(format!(
            "{key}=8: zlib cannot compress with a window of 8 bits (it uses 9), so the generator cannot keep \
             to it; give 9 to 15"
        )),
        _ => Err(format!("{key}={value}: window bits are {least} to 15")),
    }
}

impl fmt::Display for Offer {
    /// The `Sec-WebSocket-Extensions` value, parameters in RFC 7692's order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permessage-deflate")?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(bits) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={bits}")?;
        }
        match self.client_max_window_bits {
            Some(Some(bits)) => write!(f, "; client_max_window_bits={bits}"),
            Some(None) => f.write_str("; client_max_window_bits"),
            None => Ok(()),
        }
    }
}

impl Offer {
    /// Whether `response` (the 101's `Sec-WebSocket-Extensions`) is an answer to this
    /// offer that the generator can keep to (RFC 7692 §7.1): one permessage-deflate
    /// element, known parameters once each, `client_max_window_bits` only when offered and
    /// then 9 to 15, `server_max_window_bits` no larger than offered, and
    /// `server_no_context_takeover` when offered. The reason when it is not.
    pub fn check_response(&self, response: &str) -> Result<(), String> {
        let answer = Offer::from_str(response.trim())?;
        if let Some(Some(bits)) = answer.client_max_window_bits
            && self.client_max_window_bits.is_none()
        {
            return Err(format!("client_max_window_bits={bits} answers no such offer"));
        }
        if answer.client_max_window_bits == Some(None) {
            return Err("client_max_window_bits without a value".into());
        }
        if let (Some(offered), Some(answered)) = (self.server_max_window_bits, answer.server_max_window_bits)
            && answered > offered
        {
            return Err(format!(
                "server_max_window_bits={answered} exceeds the {offered} offered"
            ));
        }
        if self.server_no_context_takeover && !answer.server_no_context_takeover {
            return Err("server_no_context_takeover was offered and is missing".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_offer_and_others_parse_back_to_themselves() {
        for text in [
            BROWSER_OFFER,
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8; \
             client_max_window_bits=9",
        ] {
            let offer: Offer = text.parse().unwrap();
            assert_eq!(offer.to_string(), text);
        }
        let spaced: Offer = "Permessage-Deflate ;client_max_window_bits = \"12\"".parse().unwrap();
        assert_eq!(spaced.to_string(), "permessage-deflate; client_max_window_bits=12");
    }

    #[test]
    fn bad_offers_say_what_is_wrong() {
        for (text, says) in [
            ("deflate", "must start with `permessage-deflate`"),
            ("permessage-deflate; x_window=3", "unknown parameter \"x_window\""),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                "twice",
            ),
            ("permessage-deflate; server_max_window_bits", "needs a value"),
            ("permessage-deflate; server_max_window_bits=16", "8 to 15"),
            ("permessage-deflate; server_max_window_bits=010", "8 to 15"),
            (
                "permessage-deflate; client_max_window_bits=8",
                "zlib cannot compress with a window of 8",
            ),
            ("permessage-deflate; server_no_context_takeover=1", "takes no value"),
            ("permessage-deflate; ", "empty parameter"),
            ("permessage-deflate, permessage-deflate", "one offer only"),
        ] {
            let error = text.parse::<Offer>().unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn responses_are_checked_against_the_offer() {
        let browser: Offer = BROWSER_OFFER.parse().unwrap();
        for ok in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=8",
        ] {
            browser.check_response(ok).unwrap();
        }
        let plain: Offer = "permessage-deflate".parse().unwrap();
        assert!(
            plain
                .check_response("permessage-deflate; client_max_window_bits=10")
                .is_err()
        );
        assert!(
            browser
                .check_response("permessage-deflate; client_max_window_bits")
                .is_err()
        );
        assert!(browser.check_response("x-webkit-deflate-frame").is_err());
        let limited: Offer = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
            .parse()
            .unwrap();
        assert!(
            limited
                .check_response("permessage-deflate; server_no_context_takeover; server_max_window_bits=12")
                .is_err()
        );
        assert!(limited.check_response("permessage-deflate").is_err());
        limited
            .check_response("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
            .unwrap();
    }
}
