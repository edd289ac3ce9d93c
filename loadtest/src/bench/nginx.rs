//! nginx as the plain reverse proxy Keyguard is compared with: a generated config in a
//! temporary prefix, `worker_processes auto`, upstream keep-alive, no access log.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, ChildGuard};

/// `nginx version: nginx/1.22.1`, or `None` when nginx is not installed.
pub(super) fn version() -> Option<String> {
    // nginx prints its version on stderr.
    let out = Command::new("nginx")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Some(
        text.strip_prefix("nginx version: ")
            .unwrap_or(&text)
            .to_owned(),
    )
}

/// A running nginx. Dropping it stops the master with SIGTERM, which stops its workers
/// too (a SIGKILLed master would leave them behind), then reaps it.
pub(super) struct Nginx(ChildGuard);

impl Nginx {
    pub(super) fn pid(&self) -> u32 {
        self.0.pid()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts nginx as a plain reverse proxy to `upstream` with a generated config in `dir`:
/// every worker process the machine has, no access log, upstream keep-alive.
pub(super) fn start(dir: &Path, upstream: SocketAddr) -> anyhow::Result<(Nginx, SocketAddr)> {
    if version().is_none() {
        anyhow::bail!("nginx is not installed");
    }
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let listen = harness::free_addr()?;
    let p = prefix.display();
    let conf = format!(
        "worker_processes auto;
daemon off;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream exchange {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://exchange;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .stdout(Stdio::null());
    let mut child = ChildGuard::spawn("nginx", &mut cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.exited() {
            anyhow::bail!("nginx exited ({status}): {}", child.log());
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok((Nginx(child), listen));
        }
        if Instant::now() > deadline {
            anyhow::bail!("nginx did not listen on {listen}: {}", child.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
