//! A raw HTTP/1.1 client on 127.0.0.1, written out so that tests see the
//! daemon's bytes as any client would and the benchmarks time nothing but
//! the request: one request per connection (closed by the server), or one
//! keep-alive connection for many requests, read by Content-Length.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use serde_json::Value;

/// Long enough for a `/wait-for-idle` that waits up to its 20 s timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Response {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> io::Result<Value> {
        serde_json::from_str(&self.body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("body is not JSON ({e}): {:?}", self.body),
            )
        })
    }

    /// Status line and headers, as read from the wire.
    fn parse_head(head: &str) -> io::Result<(u16, Vec<(String, String)>)> {
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .filter(|_| status.starts_with("HTTP/1."))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an HTTP status line: {status:?}"),
                )
            })?;
        let headers = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Ok((code, headers))
    }
}

/// `method path` on a connection of its own to 127.0.0.1:`port`, with extra
/// `headers`; the server closes the connection after answering.
pub fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    stream.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
        )
        .as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("answer without a blank line after its head: {response:?}"),
        )
    })?;
    let (code, headers) = Response::parse_head(head)?;
    Ok(Response {
        code,
        headers,
        body: body.to_string(),
    })
}

/// `GET path` for tests: the status code and the JSON body; panics if the
/// request fails or the body is not JSON.
pub fn get(port: u16, path: &str) -> (u16, Value) {
    let response = get_with(port, path, &[]);
    let json = response
        .json()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.code, json)
}

/// `GET path` with extra headers, for tests; panics if the request fails.
pub fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    send(port, "GET", path, headers).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// Any method, for tests: the status code and the raw body.
pub fn request(port: u16, method: &str, path: &str) -> (u16, String) {
    let response = send(port, method, path, &[]).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (response.code, response.body)
}

/// One connection to 127.0.0.1:`port`, reused for every request.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    pub fn connect(port: u16) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        // Requests are small and sequential: do not let Nagle hold them.
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// `GET path` on this connection.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.writer
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        let mut head = String::new();
        loop {
            let before = head.len();
            if self.reader.read_line(&mut head)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the keep-alive connection",
                ));
            }
            if head[before..].trim_end().is_empty() {
                break;
            }
        }
        let (code, headers) = Response::parse_head(head.trim_end())?;
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "answer without Content-Length")
            })?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            code,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Sends `GET path` on `count` connections of their own and returns them
/// once the daemon has accepted every one (a socket still in the accept
/// queue has no owner in `ss -p`): requests held open, such as drains
/// that cannot end. Panics if they are not all accepted within 30 s.
pub fn hold_requests(port: u16, path: &str, count: usize) -> Vec<TcpStream> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let held: Vec<TcpStream> = (0..count)
        .map(|_| {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
            s.write_all(request.as_bytes()).expect("send the request");
            s
        })
        .collect();
    crate::wait::eventually(Duration::from_secs(30), || {
        let accepted = crate::ss::accepted(port);
        (accepted >= count)
            .then_some(())
            .ok_or(format!("{accepted} of {count} requests accepted"))
    });
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_gives_the_code_and_headers() {
        let (code, headers) =
            Response::parse_head("HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nX: a:b")
                .unwrap();
        assert_eq!(code, 404);
        assert_eq!(
            headers,
            [
                ("content-type".to_string(), "text/plain".to_string()),
                ("X".to_string(), "a:b".to_string())
            ]
        );
        assert!(Response::parse_head("SSH-2.0-OpenSSH").is_err());
    }
}
