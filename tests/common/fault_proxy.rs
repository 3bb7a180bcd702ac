//! A fault-injecting HTTP/1.1 proxy in front of moto, so that S3 error answers moto never
//! gives (MetadataTooLarge, AccessDenied, InvalidObjectState, ...) reach the real daemon
//! through its real S3 client. Every request is forwarded unchanged (headers and
//! signature included) unless it matches a rule, which answers with a canned S3 error
//! instead; rules can be added and removed while a mount runs, and each counts its hits.
//! Path-style requests only (`--force-path-style`, as every mount test uses).
//!
//! std::net and one thread per connection: the daemon keeps a few pooled keep-alive
//! connections, so this stays small. Every socket read is bounded (`IDLE_LIMIT` within
//! a request or response, the proxy's life between requests), so a test never hangs on it.
//!
//! Request bodies: the AWS SDK sends PutObject/UploadPart bodies with a Content-Length
//! (in-memory bodies carry their checksum in a header; streamed ones are `aws-chunked`
//! content-encoding, still with a Content-Length, and the SDK removes Transfer-Encoding),
//! and no `Expect: 100-continue`. Chunked transfer-encoding (decoded, and forwarded with
//! a Content-Length) and `Expect` are handled all the same, so another client works too.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one read or write within a request or response may wait for the peer.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// The socket timeout under every read: how often a waiting read checks for the stop.
const POLL: Duration = Duration::from_millis(200);
/// A request or response head larger than this is refused (S3's are a few KB).
const MAX_HEAD: usize = 64 * 1024;

/// Which object keys a rule matches (the key as S3 sees it: percent-decoded, without the
/// bucket).
#[derive(Debug, Clone)]
pub enum KeyMatch {
    Exact(String),
    Contains(String),
}

impl KeyMatch {
    fn matches(&self, key: &str) -> bool {
        match self {
            KeyMatch::Exact(k) => key == k,
            KeyMatch::Contains(part) => key.contains(part.as_str()),
        }
    }
}

/// A canned S3 error answer for the requests of one method on matching keys. PUT covers
/// PutObject, UploadPart and CopyObject (a PUT with `x-amz-copy-source`) alike.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: String,
    pub key: KeyMatch,
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Fault {
    pub fn new(method: &str, key: KeyMatch, status: u16, code: &str, message: &str) -> Self {
        Fault {
            method: method.to_string(),
            key,
            status,
            code: code.to_string(),
            message: message.to_string(),
        }
    }
}

/// A rule in force: remove it with `FaultProxy::remove`; `hits` counts the requests it
/// answered (and keeps counting after removal: it just stops growing).
#[derive(Debug, Clone)]
pub struct FaultRule {
    id: u64,
    hits: Arc<AtomicUsize>,
}

impl FaultRule {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

struct Rule {
    id: u64,
    fault: Fault,
    hits: Arc<AtomicUsize>,
}

type Rules = Arc<Mutex<Vec<Rule>>>;

/// The proxy; stops accepting on drop, and its connections close within `POLL`.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for `--endpoint-url`.
    pub endpoint: String,
    rules: Rules,
    next_id: AtomicU64,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to the server on 127.0.0.1's
    /// `upstream_port` (the moto server's `port`).
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        // Non-blocking accepts, so the acceptor sees the stop flag.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let rules: Rules = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (rules, stop) = (rules.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fault-proxy".into())
                .spawn(move || accept_loop(listener, upstream, rules, stop))
                .expect("spawn the fault proxy")
        };
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            rules,
            next_id: AtomicU64::new(0),
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Puts a rule in force (before earlier ones: the newest matching rule answers).
    pub fn add(&self, fault: Fault) -> FaultRule {
        let rule = FaultRule {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            hits: Arc::default(),
        };
        self.rules.lock().unwrap().insert(
            0,
            Rule {
                id: rule.id,
                fault,
                hits: rule.hits.clone(),
            },
        );
        rule
    }

    /// Lifts a rule: matching requests go to the server again.
    pub fn remove(&self, rule: &FaultRule) {
        self.rules.lock().unwrap().retain(|r| r.id != rule.id);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, rules: Rules, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let (rules, stop) = (rules.clone(), stop.clone());
                // A failed connection is the client's to see (a reset or a cut answer);
                // the proxy carries on.
                let _ = std::thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = serve(client, upstream, &rules, &stop);
                    });
            }
            // WouldBlock (nobody waiting) or a transient accept error alike.
            Err(_) => std::thread::sleep(POLL / 4),
        }
    }
}

/// A socket reader whose reads wait at most `limit` (None: until the proxy stops) without
/// a byte, polling the stop flag meanwhile.
struct Bounded {
    stream: TcpStream,
    limit: Option<Duration>,
    stop: Arc<AtomicBool>,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(io::Error::other("fault proxy stopped"));
                    }
                    if self.limit.is_some_and(|limit| started.elapsed() >= limit) {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "peer went quiet"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

fn bounded_reader(stream: &TcpStream, stop: &Arc<AtomicBool>) -> io::Result<BufReader<Bounded>> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(IDLE_LIMIT))?;
    Ok(BufReader::new(Bounded {
        stream: stream.try_clone()?,
        limit: Some(IDLE_LIMIT),
        stop: stop.clone(),
    }))
}

/// A request or response head: the start line and the header fields in order.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        self.header("content-length")
            .map(|v| v.parse().map_err(|_| bad(format!("Content-Length {v:?}"))))
            .transpose()
    }

    /// The head as sent on, without the hop-by-hop fields named.
    fn render(&self, drop: &[&str], extra: &[(&str, String)]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            if !drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                out.push_str(&format!("{name}:{value}\r\n"));
            }
        }
        for (name, value) in extra {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one CRLF-terminated line (without the CRLF), counting it against `budget`.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget || !line.ends_with(b"\n") {
        return Err(bad("a head line too long or cut off".into()));
    }
    *budget -= n;
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad("a head line that is not UTF-8".into()))
}

/// Reads a head; None when the peer closed before sending one.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD;
    let Some(start) = read_line(reader, &mut budget)? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget)?.ok_or_else(|| bad("head cut off".into()))?;
        if line.is_empty() {
            return Ok(Some(Head { start, headers }));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("header line {line:?}")))?;
        headers.push((name.to_string(), value.to_string()));
    }
}

/// Reads a chunked-encoded body up to its end, writing on either the whole encoding
/// (`framing`: relayed as it came) or only the data (decoded).
fn read_chunked(reader: &mut impl BufRead, out: &mut impl Write, framing: bool) -> io::Result<()> {
    loop {
        let mut budget = MAX_HEAD;
        let line = read_line(reader, &mut budget)?.ok_or_else(|| bad("chunk cut off".into()))?;
        if framing {
            out.write_all(format!("{line}\r\n").as_bytes())?;
        }
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let trailer =
                    read_line(reader, &mut budget)?.ok_or_else(|| bad("trailer cut off".into()))?;
                if framing {
                    out.write_all(format!("{trailer}\r\n").as_bytes())?;
                }
                if trailer.is_empty() {
                    return Ok(());
                }
            }
        }
        copy_exactly(reader, out, size)?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk not followed by CRLF".into()));
        }
        if framing {
            out.write_all(&crlf)?;
        }
    }
}

fn copy_exactly(reader: &mut impl Read, out: &mut impl Write, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut reader.take(len), out)?;
    if copied == len {
        Ok(())
    } else {
        Err(bad(format!("body cut off after {copied} of {len} bytes")))
    }
}

/// The key of a path-style request target (`/bucket/key?query`), percent-decoded.
fn object_key(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let key = path
        .trim_start_matches('/')
        .split_once('/')
        .map_or("", |(_, k)| k);
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Serves one client connection: request after request (keep-alive) until the client
/// closes, asks to close, or a response can only end by closing.
fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    rules: &Rules,
    stop: &Arc<AtomicBool>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let mut reader = bounded_reader(&client, stop)?;
    let mut writer = client;
    loop {
        // Between requests the connection may idle in the client's pool for as long as
        // the client likes; within a request the client must keep sending.
        reader.get_mut().limit = None;
        if reader.fill_buf()?.is_empty() {
            return Ok(());
        }
        reader.get_mut().limit = Some(IDLE_LIMIT);
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut parts = head.start.split(' ');
        let (method, target, version) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let close = head.has_token("connection", "close")
            || (version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
        if head.has_token("expect", "100-continue") {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let chunked = head.has_token("transfer-encoding", "chunked");
        let length = if chunked {
            None
        } else {
            head.content_length()?
        };

        let key = object_key(&target);
        let fault = rules
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.fault.method.eq_ignore_ascii_case(&method) && r.fault.key.matches(&key))
            .map(|r| {
                r.hits.fetch_add(1, Ordering::SeqCst);
                r.fault.clone()
            });
        let keep_open = match fault {
            Some(fault) => {
                // Consume the body first, so the connection stays in step.
                if chunked {
                    read_chunked(&mut reader, &mut io::sink(), false)?;
                } else {
                    copy_exactly(&mut reader, &mut io::sink(), length.unwrap_or(0))?;
                }
                answer_fault(&mut writer, &method, &key, &fault, close)?;
                !close
            }
            None => forward(
                &head,
                &method,
                chunked,
                length,
                close,
                &mut reader,
                &mut writer,
                upstream,
                stop,
            )?,
        };
        writer.flush()?;
        if !keep_open {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}

fn answer_fault(
    writer: &mut impl Write,
    method: &str,
    key: &str,
    fault: &Fault,
    close: bool,
) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Key>{}</Key><RequestId>fault-proxy</RequestId></Error>",
        xml_escape(&fault.code),
        xml_escape(&fault.message),
        xml_escape(key),
    );
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: fault-proxy\r\n",
        fault.status,
        reason(fault.status),
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    // A HEAD answer has no body, as S3's error answers to HEAD have none.
    if !method.eq_ignore_ascii_case("HEAD") {
        out.push_str(&body);
    }
    writer.write_all(out.as_bytes())
}

/// Forwards one request to the server on a fresh connection and relays the answer;
/// returns whether the client connection can carry another request.
#[allow(clippy::too_many_arguments)]
fn forward(
    head: &Head,
    method: &str,
    chunked: bool,
    length: Option<u64>,
    close: bool,
    reader: &mut BufReader<Bounded>,
    writer: &mut TcpStream,
    upstream: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> io::Result<bool> {
    let server = TcpStream::connect_timeout(&upstream, IDLE_LIMIT)?;
    let mut server_reader = bounded_reader(&server, stop)?;
    let mut server_writer = io::BufWriter::new(server);
    // One connection per request: moto may close connections as it likes, and a fresh
    // one never carries a stale answer.
    let hop_by_hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "expect",
        "te",
        "upgrade",
    ];
    if chunked {
        // Decoded and sent with a length: moto answers a chunked request body with a 500.
        let mut body = Vec::new();
        read_chunked(reader, &mut body, false)?;
        let mut drop = hop_by_hop.to_vec();
        drop.extend(["transfer-encoding", "content-length"]);
        let extra = [
            ("Connection", "close".to_string()),
            ("Content-Length", body.len().to_string()),
        ];
        server_writer.write_all(&head.render(&drop, &extra))?;
        server_writer.write_all(&body)?;
    } else {
        server_writer.write_all(&head.render(&hop_by_hop, &[("Connection", "close".into())]))?;
        copy_exactly(reader, &mut server_writer, length.unwrap_or(0))?;
    }
    server_writer.flush()?;

    let answer = read_head(&mut server_reader)?.ok_or_else(|| bad("no answer".into()))?;
    let status: u16 = answer
        .start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("status line {:?}", answer.start)))?;
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let answer_chunked = answer.has_token("transfer-encoding", "chunked");
    let answer_length = answer.content_length()?;
    // Without a length the body ends when the server closes, so the client's does too.
    let until_close = !no_body && !answer_chunked && answer_length.is_none();
    let keep_open = !close && !until_close;
    let extra: Vec<(&str, String)> = if keep_open {
        Vec::new()
    } else {
        vec![("Connection", "close".into())]
    };
    writer.write_all(&answer.render(&["connection", "keep-alive"], &extra))?;
    if !no_body {
        if answer_chunked {
            read_chunked(&mut server_reader, writer, true)?;
        } else if let Some(len) = answer_length {
            copy_exactly(&mut server_reader, writer, len)?;
        } else {
            io::copy(&mut server_reader, writer)?;
        }
    }
    Ok(keep_open)
}
