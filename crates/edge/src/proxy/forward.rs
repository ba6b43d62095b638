//! The fields a request gains and loses on its way to the origin (RFC 9110 §7.6): applied to
//! its field map, or, for the HTTP/1.1 inline path, written straight into its head.

use http::header::{self, HeaderMap, HeaderValue};

use super::headers;
use super::trace::{self, TraceContext};

/// What the PoP adds to and removes from a request's fields on its way to the origin: kept
/// apart from the request so the cache can apply it only when it goes to the origin.
#[derive(Clone)]
pub(crate) struct ForwardHeaders {
    pub client_addr: headers::ClientAddr,
    pub proto: &'static str,
    /// The site's host as the client named it.
    pub host: HeaderValue,
    pub trace: TraceContext,
    pub via: HeaderValue,
    /// Which client-describing fields the site sends (X-Forwarded-*, Forwarded).
    pub forwarded: outpost_config::ForwardedHeaders,
    /// HTTP/2 client, HTTP/1.1 origin: split cookie fields are joined.
    pub join_cookies: bool,
    /// HTTP/2 origin: the site goes in `:authority`, not Host.
    pub h2_upstream: bool,
}

/// The most fields [`ForwardHeaders::add_to`] adds to a request.
const ADDED_UPSTREAM_FIELDS: usize = 7;

impl ForwardHeaders {
    /// The client's fields less what never goes upstream (hop-by-hop fields), for a request
    /// that gets the added fields (Host, Via, forwarding fields, traceparent) later: written
    /// into its head where [`ForwardHeaders::writes_into_head`] says so, else
    /// [`ForwardHeaders::add_to`].
    pub(crate) fn strip(&self, mut headers: HeaderMap, upgrade: bool) -> HeaderMap {
        headers::remove_hop_by_hop(&mut headers, upgrade);
        if self.join_cookies {
            headers::join_cookies(&mut headers);
        }
        headers
    }

    /// Whether the added fields of a request with these (stripped) fields can be written into
    /// its HTTP/1.1 head as they are, each client field they replace left out: not where an
    /// earlier hop's X-Forwarded-For has to be combined with ours.
    pub(crate) fn writes_into_head(&self, headers: &HeaderMap) -> bool {
        let combines_xff = self.forwarded.x_forwarded() && headers::has_prior_xff(headers);
        !self.h2_upstream && !combines_xff
    }

    /// Host, Via, the site's forwarding fields (X-Forwarded-*, Forwarded) and traceparent set
    /// in a [`ForwardHeaders::strip`]ped map.
    pub(crate) fn add_to(&self, headers: &mut HeaderMap) {
        // One growth for the fields added below (Host, Via, four forwarding fields,
        // traceparent), not one per doubling: the parsers size a request's map for its own
        // fields only.
        headers.reserve(ADDED_UPSTREAM_FIELDS);
        headers.insert(header::HOST, self.host.clone());
        headers.append(header::VIA, self.via.clone());
        headers::set_forwarded(headers, self.forwarded, &self.client_addr, self.proto, &self.host);
        headers.insert(&trace::TRACEPARENT, self.trace.header_value());
        if self.h2_upstream {
            headers.remove(header::HOST);
        }
    }
}

/// The same fields as [`ForwardHeaders::add_to`], in the same places: Host replaced (and
/// first), Via after the client's, the forwarding fields as `set_forwarded` leaves them,
/// traceparent replaced.
impl crate::upstream::AddedFields for ForwardHeaders {
    fn replaces(&self, name: &http::HeaderName) -> bool {
        match name.as_str().len() {
            4 => name == header::HOST,
            11 => name == trace::TRACEPARENT,
            _ => headers::forwarding_replaces(name, self.forwarded),
        }
    }

    fn write_first(&self, head: &mut Vec<u8>) {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(self.host.as_bytes());
        head.extend_from_slice(b"\r\n");
    }

    fn write_last(&self, head: &mut Vec<u8>) {
        head.extend_from_slice(b"via: ");
        head.extend_from_slice(self.via.as_bytes());
        head.extend_from_slice(b"\r\n");
        headers::write_forwarded(head, self.forwarded, &self.client_addr, self.proto, &self.host);
        head.extend_from_slice(b"traceparent: ");
        head.extend_from_slice(&self.trace.traceparent());
        head.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use http::Method;
    use outpost_config::ForwardedHeaders as Families;

    use super::*;
    use crate::upstream::h1_inline::encode_head;

    impl ForwardHeaders {
        /// The client's fields as they go upstream through the field map.
        fn apply(&self, headers: HeaderMap, upgrade: bool) -> HeaderMap {
            let mut headers = self.strip(headers, upgrade);
            self.add_to(&mut headers);
            headers
        }
    }

    fn forward(ip: &str, forwarded: Families) -> ForwardHeaders {
        ForwardHeaders {
            client_addr: headers::ClientAddr::new(ip.parse::<IpAddr>().unwrap()),
            proto: "https",
            host: HeaderValue::from_static("www.example.com:8443"),
            trace: TraceContext::from_header(None),
            via: headers::via_value(http::Version::HTTP_11, "pop-test"),
            forwarded,
            join_cookies: false,
            h2_upstream: false,
        }
    }

    /// The head's fields in order.
    fn fields(head: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(head).unwrap();
        let mut lines = text.strip_suffix("\r\n\r\n").unwrap().split("\r\n");
        assert_eq!(lines.next(), Some("GET /p HTTP/1.1"));
        lines
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// Each name's values in order: what a recipient may rely on (RFC 9110 §5.3).
    fn by_name(fields: &[(String, String)]) -> BTreeMap<&str, Vec<&str>> {
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, value) in fields {
            map.entry(name).or_default().push(value);
        }
        map
    }

    fn client(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn fields_written_into_the_head_match_the_fields_applied_to_the_map() {
        let browser = client(&[
            ("host", "www.example.com:8443"),
            ("user-agent", "Mozilla/5.0"),
            ("accept", "*/*"),
            ("cookie", "a=1"),
        ]);
        let spoofing = client(&[
            ("accept", "*/*"),
            ("host", "www.example.com:8443"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "spoofed.example"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("forwarded", "for=203.0.113.66"),
            ("via", "1.1 earlier-hop"),
            ("connection", "x-private"),
            ("x-private", "hop only"),
        ]);
        let from_h2 = client(&[("accept", "*/*")]);
        let families = [
            Families::Both,
            Families::XForwarded,
            Families::Forwarded,
            Families::None,
        ];
        for ip in ["198.51.100.7", "2001:db8::1"] {
            for which in families {
                let forward = forward(ip, which);
                for request in [&browser, &spoofing, &from_h2] {
                    let stripped = forward.strip(request.clone(), false);
                    assert!(forward.writes_into_head(&stripped));
                    let direct = fields(&encode_head(&Method::GET, "/p", &stripped, Some(&forward)));
                    let mapped = fields(&encode_head(
                        &Method::GET,
                        "/p",
                        &forward.apply(request.clone(), false),
                        None,
                    ));
                    assert_eq!(by_name(&direct), by_name(&mapped), "{ip} {which:?} {request:?}");
                    assert_eq!(direct[0], ("host".to_owned(), "www.example.com:8443".to_owned()));
                    assert!(!direct.iter().any(|(name, _)| name == "x-private"));
                }
            }
        }
    }

    #[test]
    fn an_earlier_x_forwarded_for_is_combined_in_the_map() {
        let request = client(&[("host", "a.test"), ("x-forwarded-for", "203.0.113.66")]);
        let forward = forward("198.51.100.7", Families::Both);
        assert!(!forward.writes_into_head(&request));
        let applied = forward.apply(request.clone(), false);
        assert_eq!(applied["x-forwarded-for"], "203.0.113.66, 198.51.100.7");
        // A site that drops the family drops the earlier hop's value too: nothing to combine.
        assert!(self::forward("198.51.100.7", Families::Forwarded).writes_into_head(&request));
        let h2 = ForwardHeaders {
            h2_upstream: true,
            ..forward
        };
        assert!(!h2.writes_into_head(&client(&[("accept", "*/*")])));
    }
}
