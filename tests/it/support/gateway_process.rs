//! A real `lakesync serve` child process, for the gateway and client tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use arrow_flight::FlightClient;

/// A running `lakesync serve --config FILE`, killed on drop.
pub struct GatewayProcess {
    child: Child,
    /// The Flight address (`host:port`).
    pub flight: String,
    /// The HTTP / WebSocket address (`host:port`).
    pub http: String,
}

impl GatewayProcess {
    /// Starts the server and waits for its `listening …` line.
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lakesync"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lakesync serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} address in {line:?}"))
                .to_string()
        };
        let (flight, http) = (field("flight="), field("http="));
        Self {
            child,
            flight,
            http,
        }
    }

    /// The Flight endpoint as a URL (`http://host:port`), as the client SDK takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.flight)
    }

    /// `kill -9`, and wait for the process to be gone.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// A Flight client that sends `token` as its Bearer token.
    pub async fn client(&self, token: &str) -> FlightClient {
        let channel = tonic::transport::Endpoint::from_shared(self.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the gateway");
        let mut client = FlightClient::new(channel);
        client
            .add_header("authorization", &format!("Bearer {token}"))
            .expect("authorization header");
        client
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
