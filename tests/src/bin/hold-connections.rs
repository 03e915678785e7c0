//! Holds TCP connections open until its stdin closes, so tests and
//! benchmarks can put more sockets in a namespace than one process may hold
//! (the open-file limit here is 20 000 per process).
//!
//! `hold-connections PORT COUNT`: opens COUNT connections to 127.0.0.1:PORT.
//! `hold-connections --serve PORT COUNT`: listens on 127.0.0.1:PORT and
//! accepts COUNT connections.
//! Either prints `ready COUNT` once done.
#![allow(
    clippy::unwrap_used,
    reason = "a helper: a panic is its failure report"
)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::ExitCode,
};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.first().is_some_and(|a| a == "--serve");
    if serve {
        args.remove(0);
    }
    let (Some(port), Some(count)) = (
        args.first().and_then(|p| p.parse::<u16>().ok()),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: hold-connections [--serve] PORT COUNT");
        return ExitCode::from(2);
    };
    let mut held = Vec::with_capacity(count);
    let listener = if serve {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(l) => {
                println!("listening");
                let _ = std::io::stdout().flush();
                Some(l)
            }
            Err(e) => {
                eprintln!("error: cannot listen on port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    for i in 0..count {
        let result = match &listener {
            Some(l) => l.accept().map(|(s, _)| s),
            None => TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        };
        match result {
            Ok(stream) => held.push(stream),
            Err(e) => {
                eprintln!("error: connection {i} of {count} on port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("ready {}", held.len());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    ExitCode::SUCCESS
}
