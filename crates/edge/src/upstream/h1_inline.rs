//! HTTP/1.1 exchanges with origins driven inside the request's own task, for requests without a
//! body that ask for no protocol upgrade: GET, HEAD and the like, nearly all of a PoP's traffic.
//!
//! Why not hyper's client connection for these: hyper runs every connection as a task of its own
//! and hands each request and response across channels (an mpsc send, a oneshot, two task
//! wake-ups and its dispatcher's state machine per exchange), which measured as a fifth of the
//! proxy's user-space CPU on 1 KiB pass-through. Here the request's task writes the head with
//! one send, reads the response head into the connection's buffer and parses it with httparse;
//! the body is read from the socket by whoever polls it (the client connection's task), and the
//! connection goes back to its origin's idle list when the body ends. A body that arrived with
//! the head (small responses) releases the connection before the response leaves this module.
//!
//! Requests with a body (whose upload must go on while the response is read) and upgrades stay
//! on hyper's connections (`h1.rs`).
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when the final
//! transfer coding is chunked; close-delimited for any other transfer coding or when neither
//! length is given; otherwise Content-Length (a list of differing lengths is refused). A
//! response with both is framed by Transfer-Encoding and its Content-Length removed. A body cut
//! short is an error, never a short success, so it is never stored as complete.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::hop_by_hop::{self, Field};

/// Response header fields accepted from an origin (hyper's client allows 100).
const MAX_HEADERS: usize = 128;
/// Largest response head accepted from an origin.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Largest chunk-size line or trailer section accepted.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Bytes asked of the socket per read while a head is pending.
const HEAD_READ: usize = 8 * 1024;
/// Upper bound on one body read.
const BODY_READ_MAX: usize = 64 * 1024;

/// How an inline exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum InlineError {
    #[error("origin connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("origin closed the connection before a response")]
    ClosedBeforeResponse,
    #[error("origin closed the connection during the response head")]
    ClosedInHead,
    #[error("origin sent an invalid response head: {0}")]
    Parse(String),
    #[error("origin's response head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("origin's response body ended before its declared length")]
    IncompleteBody,
    #[error("origin sent invalid chunked framing: {0}")]
    Chunked(&'static str),
    #[error("no response head from the origin before the deadline")]
    HeadTimeout,
}

impl InlineError {
    /// Nothing came back on a reused connection: the origin closed it as the request went out
    /// (a keep-alive race), so an idempotent request may go again on a fresh connection.
    pub fn is_stale_connection(&self) -> bool {
        match self {
            Self::ClosedBeforeResponse => true,
            Self::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// The socket under an origin connection.
pub enum Io {
    Plain(super::send_batch::BatchedStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection to an origin and the bytes read from it but not yet consumed.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// The response-header deadline, kept with the connection from one exchange to the next.
    /// A timer made and dropped per exchange is an insertion into tokio's timer wheel and a
    /// removal from it (about 500 instructions, over 1 % of a pass-through request). Reset to a
    /// later deadline, a registered timer only records it (tokio moves it in the wheel when
    /// the earlier deadline comes round), so consecutive exchanges pay next to nothing.
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            head_timer: None,
        }
    }

    /// Whether an idle connection can still carry a request: the origin has not closed it and
    /// has sent nothing unasked (which would corrupt the next response). Polls the socket once
    /// without waiting.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 64];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Writes the request head and reads the response head, failing with
    /// [`InlineError::HeadTimeout`] if it has not come by `deadline`. The response's body is
    /// read later, by the returned [`InlineBody`], from this connection.
    pub async fn exchange(
        &mut self,
        head: &[u8],
        method: &Method,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Framing>, InlineError> {
        let Self { io, buf, head_timer } = self;
        let timer = match head_timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => head_timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let mut exchange = std::pin::pin!(exchange_head(io, buf, head, method));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            timer.as_mut().poll(cx).map(|()| Err(InlineError::HeadTimeout))
        })
        .await
    }

    /// Reads more of the response into the buffer; Ok(0) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want.clamp(HEAD_READ, BODY_READ_MAX));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

async fn exchange_head(
    io: &mut Io,
    buf: &mut BytesMut,
    head: &[u8],
    method: &Method,
) -> Result<Response<Framing>, InlineError> {
    let sent = match io {
        Io::Plain(stream) => super::send_batch::send(stream, head).await?,
        Io::Tls(_) => 0,
    };
    if sent < head.len() {
        io.write_all(&head[sent..]).await?;
    }
    if matches!(io, Io::Tls(_)) {
        io.flush().await?;
    }
    let mut informational = false;
    loop {
        if !buf.is_empty() {
            match parse_head(buf, method)? {
                Some(Parsed::Informational) => {
                    informational = true;
                    continue;
                }
                Some(Parsed::Final(resp)) => return Ok(resp),
                None => {}
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(InlineError::HeadTooLarge);
            }
        }
        buf.reserve(HEAD_READ);
        let n = read_buf(io, buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() && !informational {
                InlineError::ClosedBeforeResponse
            } else {
                InlineError::ClosedInHead
            });
        }
    }
}

async fn read_buf(io: &mut Io, buf: &mut BytesMut) -> io::Result<usize> {
    tokio::io::AsyncReadExt::read_buf(io, buf).await
}

/// The request head as it goes on the wire: `METHOD target HTTP/1.1`, then the fields, with
/// `added`'s first, the request's own (less those `added` replaces) and `added`'s last.
/// Field values cannot hold CR or LF (`HeaderValue` refuses them), so nothing can be smuggled
/// into the head.
pub fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: Option<&dyn super::AddedFields>,
) -> Vec<u8> {
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    // The added fields (Host, Via, forwarding fields, traceparent) take about 250 bytes.
    let room = if added.is_some() { 320 } else { 32 };
    let mut head = Vec::with_capacity(method.as_str().len() + target.len() + fields + room);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(added) = added {
        added.write_first(&mut head);
    }
    for (name, value) in headers {
        if added.is_some_and(|added| added.replaces(name)) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(added) = added {
        added.write_last(&mut head);
    }
    // A bodiless request whose method normally has a body says so, as hyper does.
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

enum Parsed {
    /// A 1xx other than 101: skipped, the final response follows.
    Informational,
    Final(Response<Framing>),
}

/// Parses a complete response head off the front of `buf`; None while it is incomplete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, InlineError> {
    // Parsed once, in place; the fields are kept as offsets so that, once the head is split
    // off and frozen, names and values are slices of its bytes (no copy per field). The slots
    // start uninitialised: zeroing 128 of them per response measured as a visible cost.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(InlineError::Parse(e.to_string())),
    };
    let offset = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base);
    let spans: Vec<[usize; 4]> = resp
        .headers
        .iter()
        .map(|f| {
            let (name, value) = (offset(f.name.as_bytes()), offset(f.value));
            [
                name,
                name.wrapping_add(f.name.len()),
                value,
                value.wrapping_add(f.value.len()),
            ]
        })
        .collect();
    let (code, minor) = (resp.code.unwrap_or(0), resp.version);
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| InlineError::Parse(format!("status {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(InlineError::Parse(
            "101 to a request that asked for no upgrade".into(),
        ));
    }
    if status.is_informational() {
        return Ok(Some(Parsed::Informational));
    }
    let version = if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut fields = FramingFields::default();
    for [name_start, name_end, value_start, value_end] in spans {
        let bad = || InlineError::Parse("field outside the head".into());
        let name = head.get(name_start..name_end).ok_or_else(bad)?;
        let (name, field) = match common_name(name) {
            Some(known) => known,
            None => {
                let name = HeaderName::from_bytes(name).map_err(|_| {
                    InlineError::Parse(format!("field name {:?}", String::from_utf8_lossy(name)))
                })?;
                let field = hop_by_hop::classify(&name);
                // Addressed to the PoP, never for the client: the proxy has something to strip.
                if outpost_cache::directives::is_for_this_cache_only(&name) {
                    fields.left_in_map = true;
                }
                (name, field)
            }
        };
        if value_start > value_end || value_end > head.len() {
            return Err(bad());
        }
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| InlineError::Parse(format!("value of {name}")))?;
        if !fields.takes(field, &name, &value) {
            headers.append(name, value);
        }
    }
    if fields.close_field && fields.close {
        headers.remove("close");
    }
    let framing = framing(status, method, version, &mut headers, &fields)?;
    let mut response = Response::new(framing);
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Parsed::Final(response)))
}

/// The field names nearly every origin response carries, in the case origins send them, with
/// what each is to a proxy.
const COMMON_NAMES: [(&[u8], HeaderName, Field); 12] = [
    (b"Date", header::DATE, Field::EndToEnd),
    (b"Server", header::SERVER, Field::EndToEnd),
    (b"Content-Type", header::CONTENT_TYPE, Field::EndToEnd),
    (b"Content-Length", header::CONTENT_LENGTH, Field::EndToEnd),
    (b"Last-Modified", header::LAST_MODIFIED, Field::EndToEnd),
    (
        b"Connection",
        header::CONNECTION,
        Field::Listed(hop_by_hop::CONNECTION),
    ),
    (b"ETag", header::ETAG, Field::EndToEnd),
    (b"Cache-Control", header::CACHE_CONTROL, Field::EndToEnd),
    (b"Accept-Ranges", header::ACCEPT_RANGES, Field::EndToEnd),
    (b"Expires", header::EXPIRES, Field::EndToEnd),
    (b"Vary", header::VARY, Field::EndToEnd),
    (
        b"Transfer-Encoding",
        header::TRANSFER_ENCODING,
        Field::Listed(hop_by_hop::TRANSFER_ENCODING),
    ),
];

/// A common field name (and whether it is connection-specific), without `from_bytes`, which
/// lower-cases every name into a scratch buffer and then matches it against the whole standard
/// list: for the dozen names of a typical response that measured as a visible share of a
/// pass-through request. Origins nearly always send these names in the case listed, so the
/// exact spellings are matched first, as literals (compiled to a length switch and word
/// compares, not a `memcmp` call per candidate); other spellings are compared ignoring case.
fn common_name(raw: &[u8]) -> Option<(HeaderName, Field)> {
    let i = match raw {
        b"Date" => 0,
        b"Server" => 1,
        b"Content-Type" => 2,
        b"Content-Length" => 3,
        b"Last-Modified" => 4,
        b"Connection" => 5,
        b"ETag" => 6,
        b"Cache-Control" => 7,
        b"Accept-Ranges" => 8,
        b"Expires" => 9,
        b"Vary" => 10,
        b"Transfer-Encoding" => 11,
        _ => COMMON_NAMES
            .iter()
            .position(|(name, ..)| name.eq_ignore_ascii_case(raw))?,
    };
    let (_, name, hop) = &COMMON_NAMES[i];
    Some((name.clone(), *hop))
}

/// How the response body is delimited, and whether the connection may carry another request
/// after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub length: Length,
    pub keep_alive: bool,
    /// The head's field map holds no connection-specific field and none addressed to the PoP
    /// alone (see `FramingFields`): the proxy need not strip it.
    pub hop_by_hop_removed: bool,
}

/// What framing reads from a response head, noted while its field map is built: the
/// connection-specific fields (RFC 9110 §7.6.1) stay out of the map, so that the proxy has
/// nothing left to strip (a scan, a lookup and a removal per message otherwise, ~1,000
/// instructions on a 1 KiB pass-through), and Content-Length needs no lookup. A Connection that
/// names other fields, and a TE, stay in the map for `hop_by_hop::remove_hop_by_hop`.
#[derive(Debug, Default)]
struct FramingFields {
    /// Connection options.
    close: bool,
    keep_alive: bool,
    /// Transfer-Encoding was present; whether its last coding is chunked.
    transfer_encoding: Option<bool>,
    /// A connection-specific field, or one addressed to the PoP alone (Surrogate-Control,
    /// Outpost-CDN-Cache-Control), stayed in the map.
    left_in_map: bool,
    /// The first Content-Length field, and how many there were.
    content_length: Option<HeaderValue>,
    content_length_fields: usize,
    /// A field named `close`: it goes when Connection lists that option.
    close_field: bool,
}

impl FramingFields {
    /// Notes a field (`field`: what it is to a proxy); true when it stays out of the map.
    fn takes(&mut self, field: Field, name: &HeaderName, value: &HeaderValue) -> bool {
        let listed = match field {
            Field::EndToEnd => {
                if name == header::CONTENT_LENGTH {
                    self.content_length_fields += 1;
                    self.content_length.get_or_insert_with(|| value.clone());
                }
                return false;
            }
            Field::Close => {
                self.close_field = true;
                return false;
            }
            Field::Listed(listed) => listed,
        };
        match listed {
            hop_by_hop::CONNECTION => {
                // Options other than these (a TE, a field of the origin's) leave the field for
                // the proxy's full rules.
                let mut plain = true;
                let options = value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii);
                for option in options.filter(|o| !o.is_empty()) {
                    if option.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else {
                        plain &= hop_by_hop::listed(option).is_some_and(|i| i != hop_by_hop::TE);
                    }
                }
                if !plain {
                    self.left_in_map = true;
                    return false;
                }
            }
            hop_by_hop::TRANSFER_ENCODING => {
                let last = value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                    .rfind(|c| !c.is_empty());
                let chunked = match last {
                    Some(coding) => coding.eq_ignore_ascii_case(b"chunked"),
                    None => self.transfer_encoding.unwrap_or(false),
                };
                self.transfer_encoding = Some(chunked);
            }
            hop_by_hop::TE => {
                self.left_in_map = true;
                return false;
            }
            _ => {}
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Empty,
    Fixed(u64),
    Chunked,
    /// Until the origin closes the connection.
    Close,
}

fn framing(
    status: StatusCode,
    method: &Method,
    version: Version,
    headers: &mut HeaderMap,
    fields: &FramingFields,
) -> Result<Framing, InlineError> {
    let keep_alive = !fields.close && (version == Version::HTTP_11 || fields.keep_alive);
    let framed = |length, keep_alive| Framing {
        length,
        keep_alive,
        hop_by_hop_removed: !fields.left_in_map,
    };
    let no_body =
        *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if no_body {
        return Ok(framed(Length::Empty, keep_alive));
    }
    if let Some(chunked) = fields.transfer_encoding {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, which a proxy removes.
        headers.remove(header::CONTENT_LENGTH);
        return Ok(if chunked && version == Version::HTTP_11 {
            framed(Length::Chunked, keep_alive)
        } else {
            framed(Length::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    let mut read = |value: &HeaderValue| -> Result<(), InlineError> {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let parsed = std::str::from_utf8(part)
                .ok()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| InlineError::Parse("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(InlineError::Parse("differing Content-Length values".into()));
            }
            length = Some(parsed);
        }
        Ok(())
    };
    match (&fields.content_length, fields.content_length_fields) {
        (None, _) => {}
        (Some(only), 1) => read(only)?,
        _ => headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .try_for_each(read)?,
    }
    Ok(match length {
        Some(0) => framed(Length::Empty, keep_alive),
        Some(n) => framed(Length::Fixed(n), keep_alive),
        None => framed(Length::Close, false),
    })
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section, up to an empty line.
    Trailers,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Fixed(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// An origin's response body read straight from its connection. When it ends cleanly, `on_end`
/// gets the connection back (for reuse) if the origin allowed keep-alive.
pub struct InlineBody {
    conn: Option<Box<Conn>>,
    state: State,
    keep_alive: bool,
    on_end: Option<Box<dyn FnOnce(Box<Conn>) + Send>>,
    /// Set once a frame failed: the body yields nothing more.
    failed: bool,
}

impl InlineBody {
    pub fn new(conn: Box<Conn>, framing: Framing, on_end: Box<dyn FnOnce(Box<Conn>) + Send>) -> Self {
        let state = match framing.length {
            Length::Empty => State::Done,
            Length::Fixed(n) => State::Fixed(n),
            Length::Chunked => State::Chunked(Chunk::Size),
            Length::Close => State::Close,
        };
        let mut body = Self {
            conn: Some(conn),
            state,
            keep_alive: framing.keep_alive,
            on_end: Some(on_end),
            failed: false,
        };
        if matches!(body.state, State::Done) {
            body.release();
        }
        body
    }

    /// The whole body is already in the buffer (a small response read with its head): taken
    /// out now, so the connection goes back before the body is even polled.
    pub fn take_buffered(&mut self) -> Option<Bytes> {
        let State::Fixed(n) = self.state else { return None };
        let conn = self.conn.as_mut()?;
        if (conn.buf.len() as u64) < n {
            return None;
        }
        let data = conn.buf.split_to(n as usize).freeze();
        self.state = State::Done;
        self.release();
        Some(data)
    }

    fn release(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if let Some(on_end) = self.on_end.take() {
            if self.keep_alive && conn.buf.is_empty() {
                on_end(conn);
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Fixed(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    fn fail(&mut self, e: InlineError) -> Poll<Option<Result<Frame<Bytes>, InlineError>>> {
        self.failed = true;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, InlineError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                State::Done => {
                    self.release();
                    return Poll::Ready(None);
                }
                State::Fixed(left) => {
                    if conn.buf.is_empty() {
                        match conn.poll_fill(cx, usize::try_from(left).unwrap_or(usize::MAX)) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => return self.fail(e.into()),
                            Poll::Ready(Ok(0)) => return self.fail(InlineError::IncompleteBody),
                            Poll::Ready(Ok(_)) => {}
                        }
                    }
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    let data = conn.buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Fixed(left)
                    };
                    if left == 0 {
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close => {
                    if conn.buf.is_empty() {
                        match conn.poll_fill(cx, BODY_READ_MAX) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => return self.fail(e.into()),
                            Poll::Ready(Ok(0)) => {
                                self.state = State::Done;
                                self.conn = None;
                                return Poll::Ready(None);
                            }
                            Poll::Ready(Ok(_)) => {}
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(chunk) => match step_chunked(&mut conn.buf, chunk) {
                    Ok(Step::Frame(frame, next)) => {
                        self.state = next;
                        if matches!(next, State::Done) {
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(Step::Next(next)) => self.state = next,
                    Ok(Step::NeedMore) => match conn.poll_fill(cx, BODY_READ_MAX) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return self.fail(e.into()),
                        Poll::Ready(Ok(0)) => return self.fail(InlineError::IncompleteBody),
                        Poll::Ready(Ok(_)) => {}
                    },
                    Err(e) => return self.fail(e),
                },
            }
        }
    }
}

enum Step {
    Frame(Frame<Bytes>, State),
    Next(State),
    NeedMore,
}

/// One step of the chunked decoder over what the buffer holds.
fn step_chunked(buf: &mut BytesMut, chunk: Chunk) -> Result<Step, InlineError> {
    match chunk {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                return if buf.len() > MAX_LINE_BYTES {
                    Err(InlineError::Chunked("chunk-size line too long"))
                } else {
                    Ok(Step::NeedMore)
                };
            };
            let line = &buf[..end];
            // Chunk extensions (after ';') are ignored, as RFC 9112 §7.1.1 allows.
            let digits = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
            if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err(InlineError::Chunked("invalid chunk size"));
            }
            let size = digits.iter().fold(0u64, |n, d| {
                n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
            });
            buf.advance(end + 2);
            Ok(Step::Next(State::Chunked(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            })))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let take = (buf.len() as u64).min(left) as usize;
            let data = buf.split_to(take).freeze();
            let left = left - take as u64;
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Step::Frame(Frame::data(data), State::Chunked(next)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(InlineError::Chunked("missing CRLF after chunk data"));
            }
            buf.advance(2);
            Ok(Step::Next(State::Chunked(Chunk::Size)))
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::Next(State::Done));
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if buf.len() > MAX_LINE_BYTES {
                    Err(InlineError::Chunked("trailer section too long"))
                } else {
                    Ok(Step::NeedMore)
                };
            };
            let section = buf.split_to(end + 4).freeze();
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = httparse::parse_headers(&section, &mut fields)
                .map_err(|_| InlineError::Chunked("invalid trailer section"))?;
            let httparse::Status::Complete((_, fields)) = parsed else {
                return Err(InlineError::Chunked("invalid trailer section"));
            };
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_maybe_shared(section.slice_ref(field.value)),
                ) else {
                    return Err(InlineError::Chunked("invalid trailer field"));
                };
                trailers.append(name, value);
            }
            Ok(Step::Frame(Frame::trailers(trailers), State::Done))
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8], method: &Method) -> Result<Option<Parsed>, InlineError> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, method)
    }

    fn final_framing(raw: &[u8], method: &Method) -> Framing {
        match parsed(raw, method) {
            Ok(Some(Parsed::Final(r))) => *r.body(),
            _ => panic!("no final response in {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let fixed = final_framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &get);
        assert_eq!(
            fixed,
            Framing {
                length: Length::Fixed(5),
                keep_alive: true,
                hop_by_hop_removed: true
            }
        );
        let head = final_framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &Method::HEAD);
        assert_eq!(head.length, Length::Empty);
        let not_modified = final_framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", &get);
        assert_eq!(not_modified.length, Length::Empty);
        let chunked_head =
            final_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n");
        assert!(
            chunked_head.headers().is_empty(),
            "neither length field reaches the client: {:?}",
            chunked_head.headers()
        );
        let chunked = *chunked_head.body();
        assert_eq!(
            chunked,
            Framing {
                length: Length::Chunked,
                keep_alive: true,
                hop_by_hop_removed: true
            }
        );
        let other_coding = final_framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", &get);
        assert_eq!(
            other_coding,
            Framing {
                length: Length::Close,
                keep_alive: false,
                hop_by_hop_removed: true
            }
        );
        let unframed = final_framing(b"HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!(
            unframed,
            Framing {
                length: Length::Close,
                keep_alive: false,
                hop_by_hop_removed: true
            }
        );
        let close = final_framing(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            &get,
        );
        assert!(!close.keep_alive);
        let http10 = final_framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", &get);
        assert!(!http10.keep_alive);
        let http10_ka = final_framing(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            &get,
        );
        assert!(http10_ka.keep_alive);
        let same_twice = final_framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", &get);
        assert_eq!(same_twice.length, Length::Fixed(3));
        let two_fields = final_framing(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\n",
            &get,
        );
        assert_eq!(two_fields.length, Length::Fixed(3));
        let differing = parsed(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            &get,
        );
        assert!(matches!(differing, Err(InlineError::Parse(_))));
    }

    fn final_head(raw: &[u8]) -> Response<Framing> {
        match parsed(raw, &Method::GET) {
            Ok(Some(Parsed::Final(r))) => r,
            _ => panic!("no final response in {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn connection_specific_fields_stay_out_of_the_field_map() {
        let resp = final_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\nTrailer: x-sum\r\nUpgrade: h2c\r\n\
              Proxy-Connection: keep-alive\r\nContent-Type: text/plain\r\n\r\n",
        );
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        assert_eq!(
            *resp.body(),
            Framing {
                length: Length::Chunked,
                keep_alive: true,
                hop_by_hop_removed: true
            }
        );
        let closing =
            final_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n");
        assert!(!closing.body().keep_alive, "close wins over keep-alive");
        let names: Vec<&str> = closing.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn fields_for_the_pop_alone_are_left_for_the_proxy_to_strip() {
        for field in [
            "Surrogate-Control: max-age=60",
            "outpost-cdn-cache-control: no-store",
        ] {
            let head = format!("HTTP/1.1 200 OK\r\n{field}\r\ncontent-length: 0\r\n\r\n");
            let resp = final_head(head.as_bytes());
            assert!(!resp.body().hop_by_hop_removed, "{field}");
            assert_eq!(resp.headers().len(), 2, "kept for the cache to read: {field}");
        }
        let plain =
            final_head(b"HTTP/1.1 200 OK\r\nCDN-Cache-Control: max-age=60\r\ncontent-length: 0\r\n\r\n");
        assert!(
            plain.body().hop_by_hop_removed,
            "CDN-Cache-Control is for clients too"
        );
    }

    #[test]
    fn a_connection_naming_other_fields_is_left_for_the_proxy_to_strip() {
        let mut resp =
            final_head(b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\n\r\n");
        assert!(!resp.body().hop_by_hop_removed);
        assert!(!resp.body().keep_alive);
        assert_eq!(resp.headers().len(), 3);
        hop_by_hop::remove_hop_by_hop(resp.headers_mut(), false);
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);

        let with_te = final_head(b"HTTP/1.1 200 OK\r\nTE: trailers\r\ncontent-length: 0\r\n\r\n");
        assert!(
            !with_te.body().hop_by_hop_removed,
            "TE is left to remove_hop_by_hop's rules"
        );

        let mut te_named =
            final_head(b"HTTP/1.1 200 OK\r\nConnection: TE\r\nTE: trailers\r\ncontent-length: 0\r\n\r\n");
        assert!(!te_named.body().hop_by_hop_removed);
        hop_by_hop::remove_hop_by_hop(te_named.headers_mut(), false);
        assert!(
            te_named.headers().get(header::TE).is_none(),
            "a TE that Connection names goes"
        );

        let close_field =
            final_head(b"HTTP/1.1 200 OK\r\nClose: 1\r\nConnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(close_field.body().hop_by_hop_removed);
        assert!(
            close_field.headers().get("close").is_none(),
            "{:?}",
            close_field.headers()
        );
        let end_to_end = final_head(b"HTTP/1.1 200 OK\r\nClose: 1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            end_to_end.headers()["close"],
            "1",
            "without the option it is an end-to-end field"
        );
    }

    #[test]
    fn common_names_are_recognised_in_any_case_and_others_parsed() {
        let raw = b"HTTP/1.1 200 OK\r\nCONTENT-type: a\r\netag: b\r\nX-Custom: c\r\nDates: d\r\n\r\n";
        let Ok(Some(Parsed::Final(resp))) = parsed(raw, &Method::GET) else {
            panic!("not parsed")
        };
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "a");
        assert_eq!(h[header::ETAG], "b");
        assert_eq!(h["x-custom"], "c");
        assert_eq!(h["dates"], "d");
        assert!(h.get(header::DATE).is_none());
        for (raw, name, hop) in &COMMON_NAMES {
            assert_eq!(HeaderName::from_bytes(raw).unwrap(), *name);
            assert_eq!(common_name(raw), Some((name.clone(), *hop)), "{name}");
            assert_eq!(
                common_name(name.as_str().as_bytes()),
                Some((name.clone(), *hop)),
                "{name}"
            );
            assert_eq!(*hop, hop_by_hop::classify(name), "{name}");
        }
    }

    #[test]
    fn transfer_encoding_removes_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n";
        let Ok(Some(Parsed::Final(resp))) = parsed(raw, &Method::GET) else {
            panic!("not parsed")
        };
        assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn bad_heads_are_refused() {
        let get = Method::GET;
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                parsed(raw, &get).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn partial_heads_wait_and_informational_responses_are_skipped() {
        let get = Method::GET;
        assert!(matches!(parsed(b"HTTP/1.1 200 OK\r\ncontent-le", &get), Ok(None)));
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, &get),
            Ok(Some(Parsed::Informational))
        ));
        assert!(matches!(parse_head(&mut buf, &get), Ok(Some(Parsed::Final(_)))));
        assert!(buf.is_empty());
    }

    /// Runs the chunked decoder over `wire` fed in pieces of `step` bytes.
    fn decode_chunked(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), InlineError> {
        let mut buf = BytesMut::new();
        let mut state = State::Chunked(Chunk::Size);
        let mut out = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            let State::Chunked(chunk) = state else {
                return Ok((out, trailers, wire.len() - fed + buf.len()));
            };
            match step_chunked(&mut buf, chunk)? {
                Step::Frame(frame, next) => {
                    state = next;
                    match frame.into_data() {
                        Ok(data) => out.extend_from_slice(&data),
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                }
                Step::Next(next) => state = next,
                Step::NeedMore => {
                    if fed == wire.len() {
                        return Err(InlineError::IncompleteBody);
                    }
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-check: 7\r\n\r\n";
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (data, trailers, left) = decode_chunked(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(trailers.unwrap()["x-check"], "7");
            assert_eq!(left, 0);
        }
        let (data, trailers, _) = decode_chunked(b"3\r\nabc\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(data, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"3\r\nab",
        ] {
            assert!(
                decode_chunked(wire, 2).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn request_heads_carry_every_field() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("www.example.com"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let head = encode_head(&Method::GET, "/p?q=1", &headers, None);
        assert_eq!(
            head,
            b"GET /p?q=1 HTTP/1.1\r\nhost: www.example.com\r\nx-a: 1\r\nx-a: 2\r\n\r\n".to_vec()
        );
        let post = encode_head(&Method::POST, "/", &HeaderMap::new(), None);
        assert!(post.ends_with(b"content-length: 0\r\n\r\n"));
    }
}
