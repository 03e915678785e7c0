//! The two ways the benchmarks ask the tracker: a new TCP connection per
//! request (what a naive poller does), and one HTTP/1.1 keep-alive
//! connection reused for every request, read by Content-Length. Measuring
//! both separates the answer's cost from the connection setup's.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The fields of `GET /` the benchmarks compare against `ss`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub active: u64,
    pub waiting: u64,
    pub listening: bool,
}

impl Status {
    fn parse(body: &str) -> anyhow::Result<Status> {
        let json: serde_json::Value =
            serde_json::from_str(body).with_context(|| format!("tracker answered {body:?}"))?;
        let count = |field: &str| {
            json[field]
                .as_u64()
                .ok_or_else(|| anyhow!("no {field} in {body:?}"))
        };
        Ok(Status {
            active: count("active_connections")?,
            waiting: count("waiting_connections")?,
            listening: json["listening"]
                .as_bool()
                .ok_or_else(|| anyhow!("no listening in {body:?}"))?,
        })
    }
}

/// One `GET /` on a connection of its own, closed by the server.
pub fn get_once(port: u16) -> anyhow::Result<Status> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let Some(("HTTP/1.1 200 OK", rest)) = response.split_once("\r\n") else {
        bail!("tracker answered: {response}");
    };
    let body = rest
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| anyhow!("no body in {response:?}"))?;
    Status::parse(body)
}

/// One connection to the tracker, reused for every request.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    pub fn connect(port: u16) -> anyhow::Result<KeepAlive> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        // Requests are small and sequential: do not let Nagle hold them.
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    pub fn get(&mut self) -> anyhow::Result<Status> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("tracker answered: {line:?}");
        }
        let mut length = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("tracker closed the keep-alive connection");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let length = length.ok_or_else(|| anyhow!("answer without Content-Length"))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Status::parse(&String::from_utf8_lossy(&body))
    }
}
