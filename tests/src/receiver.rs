//! A local HTTP destination for export tests: records what it is sent and answers as
//! the test says (a status, or closing the connection unanswered, as a server that is
//! down would).

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request heads and bodies a receiver answered with a 2xx.
pub type Received = Arc<Mutex<Vec<(String, String)>>>;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// A status with a JSON body.
    Json(u16, &'static str),
    /// Close the connection without an answer.
    Close,
}

/// How to answer a request, from its head (request line and headers) and body.
type Policy = Box<dyn FnMut(&str, &str) -> Answer + Send>;

pub struct Receiver {
    pub port: u16,
    /// What was answered with a 2xx.
    pub got: Received,
    /// Every request and how it was answered.
    pub all: Arc<Mutex<Vec<(String, Answer)>>>,
    policy: Arc<Mutex<Policy>>,
}

impl Receiver {
    /// Answers every request 200.
    pub fn start() -> Receiver {
        Receiver::answering(|_| Answer::Status(200), Duration::ZERO)
    }

    /// Answers each request (by its body) as `policy` says, after `delay`.
    pub fn answering(mut policy: impl FnMut(&str) -> Answer + Send + 'static, delay: Duration) -> Receiver {
        Receiver::responding(move |_, body| policy(body), delay)
    }

    /// Answers each request (by its head and body) as `policy` says, after `delay`.
    pub fn responding(policy: impl FnMut(&str, &str) -> Answer + Send + 'static, delay: Duration) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver =
            Receiver { port, got: Arc::default(), all: Arc::default(), policy: Arc::new(Mutex::new(Box::new(policy))) };
        let (got, all, policy) = (receiver.got.clone(), receiver.all.clone(), receiver.policy.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (got, all, policy) = (got.clone(), all.clone(), policy.clone());
                std::thread::spawn(move || serve(stream, delay, &got, &all, &policy));
            }
        });
        receiver
    }

    /// Answers from now on as `policy` says.
    pub fn set(&self, mut policy: impl FnMut(&str) -> Answer + Send + 'static) {
        *self.policy.lock().unwrap() = Box::new(move |_, body| policy(body));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn bodies(&self) -> Vec<String> {
        self.got.lock().unwrap().iter().map(|(_, b)| b.clone()).collect()
    }
}

fn serve(
    stream: std::net::TcpStream,
    delay: Duration,
    got: &Received,
    all: &Mutex<Vec<(String, Answer)>>,
    policy: &Mutex<Policy>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).to_string();
        std::thread::sleep(delay);
        let answer = (policy.lock().unwrap())(&head, &body);
        all.lock().unwrap().push((body.clone(), answer));
        let status = match answer {
            Answer::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            Answer::Status(status) => (status, ""),
            Answer::Json(status, json) => (status, json),
        };
        let (status, answer_body) = status;
        if (200..300).contains(&status) {
            got.lock().unwrap().push((head, body));
        }
        let mut s = &stream;
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer_body}",
            answer_body.len()
        );
    }
}
