//! The fields of the tracker's `GET /` the benchmarks compare against `ss`,
//! asked the two ways the benchmarks ask: a new TCP connection per request
//! (what a naive poller does), and one HTTP/1.1 keep-alive connection
//! reused for every request. Measuring both separates the answer's cost
//! from the connection setup's.
use anyhow::{Context as _, anyhow, bail};
use test_support::http::{self, KeepAlive, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub active: u64,
    pub waiting: u64,
    pub listening: bool,
}

impl Status {
    fn from_response(response: Response) -> anyhow::Result<Status> {
        if response.code != 200 {
            bail!("tracker answered {}: {}", response.code, response.body);
        }
        let body = &response.body;
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
    Status::from_response(http::send(port, "GET", "/", &[])?)
}

/// One connection to the tracker, reused for every `GET /`.
pub struct Connection(KeepAlive);

impl Connection {
    pub fn connect(port: u16) -> anyhow::Result<Connection> {
        Ok(Connection(KeepAlive::connect(port)?))
    }

    pub fn get(&mut self) -> anyhow::Result<Status> {
        Status::from_response(self.0.get("/")?)
    }
}
