//! HAProxy's runtime API (the `stats socket … level admin` of deploy/haproxy.cfg): one command
//! per connection, over TCP (`127.0.0.1:8097`) or a Unix socket (a path).

use std::{collections::BTreeMap, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ReleaseError;

/// A server as `show servers state` reports it, in one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub backend: String,
    pub name: String,
    pub address: String,
    /// Running (`srv_op_state` 2) and, when checked, its last check passed
    /// (`srv_check_result` 3 or 4) if checks are on (`srv_check_state` bit 4): a server just
    /// added counts as running before any check.
    pub up: bool,
    /// `srv_uweight`: the weight in force.
    pub weight: u32,
    /// `srv_iweight`: the weight the configuration gave it.
    pub initial_weight: u32,
}

#[derive(Clone, Debug)]
pub struct RuntimeApi {
    address: String,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl RuntimeApi {
    pub fn new(address: &str) -> RuntimeApi {
        RuntimeApi { address: address.to_owned() }
    }

    /// Sends one command and answers HAProxy's reply (it closes the connection after it).
    pub async fn command(&self, line: &str) -> Result<String, ReleaseError> {
        let failed = |e: std::io::Error| ReleaseError::Haproxy { command: line.to_owned(), cause: e.to_string() };
        let exchange = async {
            let mut reply = String::new();
            if self.address.contains('/') {
                let mut s = tokio::net::UnixStream::connect(&self.address).await?;
                s.write_all(format!("{line}\n").as_bytes()).await?;
                s.read_to_string(&mut reply).await?;
            } else {
                let mut s = tokio::net::TcpStream::connect(&self.address).await?;
                s.write_all(format!("{line}\n").as_bytes()).await?;
                s.read_to_string(&mut reply).await?;
            }
            Ok::<_, std::io::Error>(reply)
        };
        let reply = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| failed(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
            .map_err(failed)?;
        Ok(reply.trim().to_owned())
    }

    /// A command whose success HAProxy answers with nothing, or with `expect`.
    async fn act(&self, line: &str, expect: &str) -> Result<(), ReleaseError> {
        let reply = self.command(line).await?;
        if reply.is_empty() || reply.starts_with(expect) {
            Ok(())
        } else {
            Err(ReleaseError::Haproxy { command: line.to_owned(), cause: reply })
        }
    }

    /// Every server of every backend.
    pub async fn servers(&self) -> Result<Vec<Server>, ReleaseError> {
        let reply = self.command("show servers state").await?;
        Ok(parse_servers_state(&reply))
    }

    /// The backends and their servers, without `except` (the canary's name).
    pub async fn backends(&self, except: &str) -> Result<BTreeMap<String, Vec<Server>>, ReleaseError> {
        let mut backends: BTreeMap<String, Vec<Server>> = BTreeMap::new();
        for s in self.servers().await? {
            let entry = backends.entry(s.backend.clone()).or_default();
            if s.name != except {
                entry.push(s);
            }
        }
        backends.retain(|_, servers| !servers.is_empty());
        Ok(backends)
    }

    /// A new server, health-checked with `options`, at weight 0, then enabled.
    pub async fn add_server(
        &self,
        backend: &str,
        name: &str,
        address: &str,
        options: &str,
    ) -> Result<(), ReleaseError> {
        self.act(&format!("add server {backend}/{name} {address} {options} weight 0"), "New server registered").await?;
        self.act(&format!("enable health {backend}/{name}"), "").await?;
        self.act(&format!("enable server {backend}/{name}"), "").await
    }

    pub async fn set_weight(&self, backend: &str, name: &str, weight: u32) -> Result<(), ReleaseError> {
        self.act(&format!("set weight {backend}/{name} {weight}"), "").await
    }

    /// Takes the server out (maintenance, its sessions cut) and deletes it; HAProxy refuses
    /// while connections are attached, so this retries for `within`.
    pub async fn remove_server(&self, backend: &str, name: &str, within: Duration) -> Result<(), ReleaseError> {
        self.act(&format!("set server {backend}/{name} state maint"), "").await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.act(&format!("shutdown sessions server {backend}/{name}"), "").await?;
            match self.act(&format!("del server {backend}/{name}"), "Server deleted").await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// `show servers state` (format 1): a version line, a header naming the columns, then one
/// line per server.
pub fn parse_servers_state(reply: &str) -> Vec<Server> {
    let mut columns: Vec<&str> = Vec::new();
    let mut servers = Vec::new();
    for line in reply.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            columns = header.split_whitespace().collect();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| columns.iter().position(|c| *c == name).and_then(|i| fields.get(i)).copied();
        let (Some(backend), Some(name), Some(address), Some(port)) =
            (field("be_name"), field("srv_name"), field("srv_addr"), field("srv_port"))
        else {
            continue;
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        servers.push(Server {
            backend: backend.to_owned(),
            name: name.to_owned(),
            address: format!("{address}:{port}"),
            up: number("srv_op_state") == 2 && (number("srv_check_state") & 4 == 0 || number("srv_check_result") >= 3),
            weight: number("srv_uweight"),
            initial_weight: number("srv_iweight"),
        });
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_state_is_read_by_its_header() {
        let reply = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
            srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state \
            bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr \
            srv_agent_addr srv_agent_port\n\
            3 b 1 draw64-1 127.0.0.1 2 0 1 1 0 15 3 4 6 0 0 0 - 18401 - 0 0 - - 0\n\
            3 b 2 canary 127.0.0.1 0 1 30 10 0 1 0 0 2 0 0 0 - 18402 - 0 0 - - 0\n";
        let servers = parse_servers_state(reply);
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0],
            Server {
                backend: "b".into(),
                name: "draw64-1".into(),
                address: "127.0.0.1:18401".into(),
                up: true,
                weight: 1,
                initial_weight: 1
            }
        );
        assert!(!servers[1].up);
        assert_eq!((servers[1].weight, servers[1].initial_weight), (30, 10));
    }
}
