//! Accepts the `:authority` that etcdctl 3.4 sends with `--cluster`.
//!
//! etcdctl 3.4 dials the members' client URLs as gRPC targets `passthrough:///http://host:port`, so
//! its HTTP/2 requests carry `:authority: http://host:port`. Go's HTTP/2 server takes that; hyper
//! refuses the stream (RST_STREAM, PROTOCOL_ERROR), which broke `etcdctl endpoint status --cluster`
//! and `etcdctl defrag --cluster`. [`AuthorityFix`] wraps each accepted client connection and, in
//! the HTTP/2 HEADERS frames coming in, replaces an `:authority` whose value starts with `http://`
//! or `https://` by `c` before hyper parses it (Conclave routes nothing by authority).
//! Everything else passes through unchanged: other frames, other fields, HTTP/1.1 connections.
//!
//! Why HPACK state stays consistent: the field is rewritten where the client sends it as a
//! literal (and possibly adds it to its dynamic table), and the new value is never longer than the
//! old (decoded or encoded), so the server's dynamic table gets the same entries in the same order, none larger than
//! the client's copy: it never evicts an entry the client still refers to, and an index names the
//! same entry on both sides. Later requests refer to that entry by index and get the new value.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may have: a rewritten frame stays within it.
const MIN_MAX_FRAME: usize = 16_384;
/// HPACK static table index of `:authority`.
const AUTHORITY_INDEX: usize = 1;
/// No longer than any value it replaces, decoded (`http://` is 7 bytes) or encoded (`http://` is
/// 6 bytes in Huffman code), so the HPACK tables stay in step and the frame never grows.
const REPLACEMENT: &[u8] = b"c";
/// `http://` and `https://` as HPACK Huffman codes (RFC 7541 appendix B), bit strings.
const HTTP_HUFFMAN: &str = "10011101001010011010111011100011000011000";
const HTTPS_HUFFMAN: &str = "1001110100101001101011010001011100011000011000";

/// A client connection whose incoming HTTP/2 `:authority` fields are made acceptable to hyper.
pub struct AuthorityFix<IO> {
    io: IO,
    mode: Mode,
    /// Bytes read and not yet looked at.
    pending: BytesMut,
    /// Bytes looked at, to hand to the reader.
    ready: BytesMut,
    scratch: Box<[u8]>,
}

enum Mode {
    /// Waiting to see whether the connection starts with the HTTP/2 preface.
    Preface,
    /// Between frames, or inside a frame whose `usize` payload bytes pass through unchanged.
    Frames(usize),
    /// Not HTTP/2: everything passes through.
    Passthrough,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        AuthorityFix {
            io,
            mode: Mode::Preface,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Moves what can be decided from `pending` to `ready`; false when more input is needed.
    fn process(&mut self) -> bool {
        match self.mode {
            Mode::Preface => {
                let n = self.pending.len().min(PREFACE.len());
                if self.pending[..n] != PREFACE[..n] {
                    self.mode = Mode::Passthrough;
                } else if n == PREFACE.len() {
                    self.ready.extend_from_slice(&self.pending.split_to(n));
                    self.mode = Mode::Frames(0);
                } else {
                    return false;
                }
                true
            }
            Mode::Passthrough => {
                let all = self.pending.split();
                self.ready.extend_from_slice(&all);
                !all.is_empty()
            }
            Mode::Frames(left) if left > 0 => {
                let n = left.min(self.pending.len());
                self.ready.extend_from_slice(&self.pending.split_to(n));
                self.mode = Mode::Frames(left - n);
                n > 0
            }
            Mode::Frames(_) => {
                if self.pending.len() < FRAME_HEADER {
                    return false;
                }
                let len = u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]])
                    as usize;
                let (kind, flags) = (self.pending[3], self.pending[4]);
                if !rewritable(kind, flags, len) {
                    self.ready
                        .extend_from_slice(&self.pending.split_to(FRAME_HEADER));
                    self.mode = Mode::Frames(len);
                    return true;
                }
                if self.pending.len() < FRAME_HEADER + len {
                    return false;
                }
                let frame = self.pending.split_to(FRAME_HEADER + len);
                match rewrite_headers(&frame) {
                    Some(fixed) => self.ready.extend_from_slice(&fixed),
                    None => self.ready.extend_from_slice(&frame),
                }
                true
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.pending.is_empty() && !matches!(this.mode, Mode::Preface) {
                // The usual case: read straight into the caller's buffer and hand it over, keeping
                // back only an incomplete frame header or a HEADERS frame to rewrite or to see whole.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let released = this.scan(&buf.filled()[start..]);
                let end = start + released;
                if end < buf.filled().len() {
                    this.pending.extend_from_slice(&buf.filled()[end..]);
                    buf.set_filled(end);
                }
                if released > 0 || this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.process() {
                continue;
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of input: whatever is left goes as it is (hyper reports a cut frame).
                let rest = this.pending.split();
                this.ready.extend_from_slice(&rest);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.pending.extend_from_slice(read.filled());
        }
    }
}

impl<IO> AuthorityFix<IO> {
    /// How many of `data` (just read, nothing pending before it) pass unchanged; the rest must go
    /// through [`Self::process`]. Moves `mode` past what passes.
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        loop {
            match self.mode {
                Mode::Frames(left) if left > 0 => {
                    let n = left.min(data.len() - at);
                    at += n;
                    self.mode = Mode::Frames(left - n);
                    if at == data.len() {
                        return at;
                    }
                }
                Mode::Frames(_) => {
                    let Some(header) = data.get(at..at + FRAME_HEADER) else {
                        return at;
                    };
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    if !rewritable(header[3], header[4], len) {
                        at += FRAME_HEADER;
                        self.mode = Mode::Frames(len);
                        continue;
                    }
                    match data.get(at..at + FRAME_HEADER + len) {
                        Some(frame) if rewrite_headers(frame).is_none() => {
                            at += FRAME_HEADER + len;
                            if at == data.len() {
                                return at;
                            }
                        }
                        _ => return at,
                    }
                }
                Mode::Preface | Mode::Passthrough => return data.len(),
            }
        }
    }
}

/// Whether a frame is a HEADERS frame this module looks into.
fn rewritable(kind: u8, flags: u8, len: usize) -> bool {
    kind == HEADERS && flags & END_HEADERS != 0 && len <= MIN_MAX_FRAME
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for AuthorityFix<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A HEADERS frame (header included) with a schemed `:authority` literal replaced; `None` when
/// there is nothing to replace (or the block cannot be read: hyper will say why).
fn rewrite_headers(frame: &[u8]) -> Option<Vec<u8>> {
    let flags = frame[4];
    let payload = &frame[FRAME_HEADER..];
    let mut start = 0;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *payload.first()? as usize;
        start = 1;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    let end = payload.len().checked_sub(pad)?;
    let block = payload.get(start..end)?;
    let (value_at, value_end) = find_schemed_authority(block)?;
    let mut fixed_block = Vec::with_capacity(block.len());
    fixed_block.extend_from_slice(&block[..value_at]);
    fixed_block.push(REPLACEMENT.len() as u8); // raw string, length < 127
    fixed_block.extend_from_slice(REPLACEMENT);
    fixed_block.extend_from_slice(&block[value_end..]);
    let len = start + fixed_block.len() + pad;
    let mut out = Vec::with_capacity(FRAME_HEADER + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&frame[3..FRAME_HEADER]);
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(&fixed_block);
    out.extend_from_slice(&payload[end..]);
    Some(out)
}

/// Where the value string (length prefix included) of a literal `:authority` field starting
/// with a URL scheme lies in `block`.
fn find_schemed_authority(block: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let prefix_bits = match first {
            b if b & 0x80 != 0 => {
                // Indexed field.
                at = integer(block, at, 7)?.1;
                continue;
            }
            b if b & 0xe0 == 0x20 => {
                // Dynamic table size update.
                at = integer(block, at, 5)?.1;
                continue;
            }
            b if b & 0xc0 == 0x40 => 6, // literal, incremental indexing
            _ => 4,                     // literal, without indexing or never indexed
        };
        let (name_index, after_name) = integer(block, at, prefix_bits)?;
        at = after_name;
        if name_index == 0 {
            at = string(block, at)?.2;
        }
        let (huffman, value, value_end) = string(block, at)?;
        if name_index == AUTHORITY_INDEX && has_scheme(huffman, &block[value..value_end]) {
            return Some((at, value_end));
        }
        at = value_end;
    }
    None
}

/// An HPACK integer with an `n`-bit prefix at `at`: its value and where it ends.
fn integer(block: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = (*block.get(at)? as usize) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    let mut shift = 0;
    loop {
        let b = *block.get(at)?;
        at += 1;
        value = value.checked_add(((b & 0x7f) as usize).checked_shl(shift)?)?;
        shift += 7;
        if b & 0x80 == 0 || shift > 28 {
            return (b & 0x80 == 0).then_some((value, at));
        }
    }
}

/// An HPACK string at `at`: whether it is Huffman-coded, where its bytes start and end.
fn string(block: &[u8], at: usize) -> Option<(bool, usize, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = integer(block, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= block.len()).then_some((huffman, start, end))
}

fn has_scheme(huffman: bool, value: &[u8]) -> bool {
    if !huffman {
        return value.starts_with(b"http://") || value.starts_with(b"https://");
    }
    let bits: String = value.iter().take(6).map(|b| format!("{b:08b}")).collect();
    bits.starts_with(HTTP_HUFFMAN) || bits.starts_with(HTTPS_HUFFMAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Huffman-codes `s` with just the characters the tests use (RFC 7541 appendix B), padded
    /// with ones.
    fn huffman(s: &str) -> Vec<u8> {
        let mut bits = String::new();
        for c in s.chars() {
            bits += match c {
                'h' => "100111",
                't' => "01001",
                'p' => "101011",
                's' => "01000",
                ':' => "1011100",
                '/' => "011000",
                '1' => "00001",
                '2' => "00010",
                '3' => "011001",
                '7' => "011101",
                '9' => "011111",
                '0' => "00000",
                '.' => "010111",
                _ => panic!("no code for {c}"),
            };
        }
        while !bits.len().is_multiple_of(8) {
            bits.push('1');
        }
        bits.as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect()
    }

    fn headers_frame(flags: u8, block: &[u8]) -> Vec<u8> {
        let mut f = (block.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[HEADERS, flags, 0, 0, 0, 1]);
        f.extend_from_slice(block);
        f
    }

    /// A request block: `:method POST` (indexed 3), `:authority` as a literal with incremental
    /// indexing of `value` (already a string with its length prefix), `:path` literal.
    fn block(value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x41];
        b.extend_from_slice(value);
        b.extend_from_slice(&[0x04, 0x02]);
        b.extend_from_slice(b"/x");
        b
    }

    fn raw(s: &str) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn huff(s: &str) -> Vec<u8> {
        let h = huffman(s);
        let mut v = vec![0x80 | h.len() as u8];
        v.extend_from_slice(&h);
        v
    }

    /// Gives at most `step` bytes per read, so frames arrive cut anywhere.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// What comes out of the fix, the same whatever the size of the reads.
    async fn through(input: Vec<u8>) -> Vec<u8> {
        let mut outs = Vec::new();
        for step in [1, 2, 7, 9, 64, 1 << 20] {
            let mut fix = AuthorityFix::new(Trickle {
                data: input.clone(),
                at: 0,
                step,
            });
            let mut out = Vec::new();
            fix.read_to_end(&mut out).await.unwrap();
            outs.push(out);
        }
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "read sizes changed the output"
        );
        outs.pop().unwrap()
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        for f in frames {
            c.extend_from_slice(f);
        }
        c
    }

    #[tokio::test]
    async fn a_schemed_authority_is_replaced_in_raw_and_huffman_form() {
        let settings = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        for value in [
            raw("http://127.0.0.1:2379"),
            huff("http://127.0.0.1:2379"),
            huff("https://10.0.0.1:2379"),
        ] {
            let input = connection(&[settings.clone(), headers_frame(END_HEADERS, &block(&value))]);
            let expected = connection(&[
                settings.clone(),
                headers_frame(END_HEADERS, &block(&raw("c"))),
            ]);
            assert_eq!(through(input).await, expected);
        }
    }

    #[tokio::test]
    async fn padding_and_priority_are_kept() {
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(&block(&huff("http://127.0.0.1:2379")));
        payload.extend_from_slice(&[0, 0, 0]);
        let mut expected_payload = vec![3, 0, 0, 0, 0, 16];
        expected_payload.extend_from_slice(&block(&raw("c")));
        expected_payload.extend_from_slice(&[0, 0, 0]);
        let flags = END_HEADERS | PADDED | PRIORITY;
        assert_eq!(
            through(connection(&[headers_frame(flags, &payload)])).await,
            connection(&[headers_frame(flags, &expected_payload)])
        );
    }

    #[tokio::test]
    async fn everything_else_passes_unchanged() {
        let plain = connection(&[
            headers_frame(END_HEADERS, &block(&raw("127.0.0.1:2379"))),
            headers_frame(END_HEADERS, &block(&huff("127.0.0.1:2379"))),
            // A DATA frame whose payload looks like a HEADERS frame.
            {
                let inner = headers_frame(END_HEADERS, &block(&raw("http://x:1")));
                let mut f = (inner.len() as u32).to_be_bytes()[1..].to_vec();
                f.extend_from_slice(&[0x0, 0x1, 0, 0, 0, 1]);
                f.extend_from_slice(&inner);
                f
            },
            // Headers continued in a CONTINUATION frame are left alone.
            headers_frame(0, &block(&raw("http://x:1"))),
        ]);
        assert_eq!(through(plain.clone()).await, plain);
        let http1 = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        assert_eq!(through(http1.clone()).await, http1);
        // A cut frame is handed on as it is.
        let cut = connection(&[headers_frame(END_HEADERS, &block(&raw("http://x:1")))]);
        let cut = cut[..cut.len() - 3].to_vec();
        assert_eq!(through(cut.clone()).await, cut);
    }
}
