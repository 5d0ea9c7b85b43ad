//! A tiny HTTP service for Charter's deployer example: std only, so the
//! build is one `rustc` call. It listens on $PORT and answers every path
//! with its version; /healthz answers "ok".

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

const VERSION: &str = "v1";

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap_or(8080))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("hello {VERSION} listening on {port}");
    for stream in listener.incoming().flatten() {
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        // Read the headers up to the blank line.
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            header.clear();
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let body = if path == "/healthz" {
            "ok\n".to_string()
        } else {
            format!("hello from {VERSION}\n")
        };
        let mut out = &stream;
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
