//! Finding the end of an HTTP/1.x request head in the bytes read so far, with the size
//! limits that decide between 414 and 431. It does not parse the request (pingora does):
//! it only has to know when the head is complete and whether it is too large.

/// pingora parses at most this many header lines (more would be a 400 from it): more is 431.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLarge {
    /// 414: the request line (hence the target) is longer than allowed.
    RequestLine,
    /// 431: the head is larger than allowed, or has too many header lines.
    Head,
}

/// `Ok(Some(n))`: the head is complete and `buf[..n]` holds it (with any empty lines sent
/// before the request line, which RFC 9112 2.2 lets a server ignore). `Ok(None)`: more bytes
/// are needed.
pub fn scan(buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, TooLarge> {
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    // Stray empty lines count against the head, or a client could send them forever.
    if start > limits.max_header_bytes {
        return Err(TooLarge::Head);
    }
    let head = &buf[start..];
    let Some(line_end) = memchr::memchr(b'\n', head) else {
        return match head.len() > limits.max_request_line {
            true => Err(TooLarge::RequestLine),
            false => Ok(None),
        };
    };
    let request_line = trim_cr(&head[..line_end]).len();
    if request_line > limits.max_request_line {
        return Err(TooLarge::RequestLine);
    }
    let mut pos = line_end + 1;
    let mut lines = 0;
    loop {
        let Some(n) = memchr::memchr(b'\n', &head[pos..]) else {
            return match head.len() > limits.max_header_bytes {
                true => Err(TooLarge::Head),
                false => Ok(None),
            };
        };
        let end = pos + n + 1;
        if end > limits.max_header_bytes {
            return Err(TooLarge::Head);
        }
        if trim_cr(&head[pos..pos + n]).is_empty() {
            return Ok(Some(start + end));
        }
        lines += 1;
        if lines > MAX_HEADERS {
            return Err(TooLarge::Head);
        }
        pos = end;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 64,
        max_header_bytes: 256,
    };

    fn scan(b: &[u8]) -> Result<Option<usize>, TooLarge> {
        super::scan(b, &LIMITS)
    }

    #[test]
    fn complete_partial_and_bare_lf() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(scan(req), Ok(Some(req.len() - 4)));
        assert_eq!(scan(b"GET / HTTP/1.1\nHost: a\n\n"), Ok(Some(24)));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(scan(b"GET / HT"), Ok(None));
        assert_eq!(scan(b""), Ok(None));
        assert_eq!(scan(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Ok(Some(22)));
        assert_eq!(scan(b"GET / HTTP/1.0\r\n\r\n"), Ok(Some(18)));
    }

    #[test]
    fn request_line_limit_is_414_even_before_it_ends() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(60));
        assert_eq!(scan(long.as_bytes()), Err(TooLarge::RequestLine));
        let unfinished = format!("GET /{}", "a".repeat(70));
        assert_eq!(scan(unfinished.as_bytes()), Err(TooLarge::RequestLine));
        let fits = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40));
        assert!(scan(fits.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn head_limits_are_431() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(300));
        assert_eq!(scan(big.as_bytes()), Err(TooLarge::Head));
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(300));
        assert_eq!(scan(unfinished.as_bytes()), Err(TooLarge::Head));
        let roomy = HeadLimits {
            max_request_line: 64,
            max_header_bytes: 1 << 20,
        };
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(super::scan(many.as_bytes(), &roomy), Err(TooLarge::Head));
        let enough = format!("GET / HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS));
        assert!(super::scan(enough.as_bytes(), &roomy).unwrap().is_some());
        assert_eq!(scan(&[b'\n'; 300]), Err(TooLarge::Head));
    }
}
