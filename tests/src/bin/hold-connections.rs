//! Opens N connections to 127.0.0.1:PORT and holds them until its stdin
//! closes. The black-box tests use it to put more sockets in the namespace
//! than one process may hold (the open-file limit is 20 000 per process).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(count)) = (
        args.get(1).and_then(|p| p.parse::<u16>().ok()),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: hold-connections PORT COUNT");
        return ExitCode::from(2);
    };
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                eprintln!("error: connection {i} of {count} to port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("ready {}", held.len());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    ExitCode::SUCCESS
}
