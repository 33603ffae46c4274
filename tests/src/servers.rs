//! Real, uninstrumented servers for sonde to observe: the Python
//! `http.server` service in `servers/app.py`, chains of Python services
//! calling each other (`servers/chain.py`), nginx, and the Node service in
//! `servers/app.js`. Each is stopped when its guard is dropped.
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{
    children, exe_basename, first_stdout_line, free_port, wait_for_port, ChildGuard, TempDir,
};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A file in `tests/servers/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("servers")
        .join(name)
}

/// The Python interpreter itself (`SONDE_TEST_PYTHON`, else what `python3`
/// resolves to), so no wrapper such as a pyenv shim runs between spawn and
/// the interpreter.
pub fn python_interpreter() -> PathBuf {
    static INTERPRETER: OnceLock<PathBuf> = OnceLock::new();
    INTERPRETER
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("SONDE_TEST_PYTHON") {
                return PathBuf::from(path);
            }
            let output = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("run python3");
            assert!(output.status.success(), "python3 failed: {output:?}");
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        })
        .clone()
}

/// A server process listening on 127.0.0.1.
pub struct Server {
    process: ChildGuard,
    port: u16,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What sonde calls this server: the basename of its executable.
    pub fn service_name(&self) -> String {
        exe_basename(self.pid())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Spawns `command`, which prints the port it listens on as its first
    /// stdout line, and waits until that port accepts connections.
    fn spawn_announcing_port(name: &str, command: &mut Command) -> Result<Server> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let mut process = ChildGuard::new(name, child);
        let line = first_stdout_line(&mut process, STARTUP_TIMEOUT)?;
        let port = line
            .parse()
            .with_context(|| format!("{name} printed {line:?} instead of its port"))?;
        wait_for_port(port, STARTUP_TIMEOUT)?;
        Ok(Server { process, port })
    }
}

/// `servers/app.py`: Python's threaded `http.server` (endpoints listed there).
pub fn python() -> Server {
    Server::spawn_announcing_port(
        "python app.py",
        Command::new(python_interpreter()).arg(script("app.py")),
    )
    .expect("start the Python test server")
}

/// Debian's own `/usr/bin/python3 -m http.server` (a listing of /tmp), run
/// as `uid`: a program another user owns, whose /proc/<pid>/exe only a
/// reader with CAP_SYS_PTRACE may follow. Its executable's name
/// (python3.11) differs from its command name (python3).
pub fn system_python_as(uid: u32) -> Server {
    let port = free_port();
    let serve = format!(
        "echo {port}; exec /usr/bin/python3 -m http.server {port} --bind 127.0.0.1 --directory /tmp \
         >/dev/null 2>&1"
    );
    Server::spawn_announcing_port(
        "python3 -m http.server",
        Command::new("sh")
            .args(["-c", &serve])
            // Somewhere `uid` may enter (the tests' own directory is root's).
            .current_dir("/tmp")
            .uid(uid)
            .gid(uid),
    )
    .expect("start Debian's python3 -m http.server")
}

/// `servers/app.py --fork`: the parent accepts each connection and a forked
/// child serves it on the socket it inherited.
pub fn python_forking() -> Server {
    Server::spawn_announcing_port(
        "python app.py --fork",
        Command::new(python_interpreter())
            .arg(script("app.py"))
            .arg("--fork"),
    )
    .expect("start the forking Python test server")
}

/// `servers/chain.py`: a service whose `GET /hop` first calls `GET /hop` on
/// each port of `next`, in order, from the thread serving the request.
pub fn chain(next: &[u16]) -> Server {
    let mut command = Command::new(python_interpreter());
    command.arg(script("chain.py"));
    for port in next {
        command.arg("--next").arg(port.to_string());
    }
    Server::spawn_announcing_port("python chain.py", &mut command)
        .expect("start the Python chain service")
}

/// `servers/app.js`: Node's `http` module (endpoints listed there).
pub fn node() -> Server {
    node_with(&[])
}

/// [`node`] listening on `port`: a port that is free, or one whose server
/// just exited (Node binds with SO_REUSEADDR).
pub fn node_on(port: u16) -> Server {
    node_with(&[port.to_string()])
}

fn node_with(args: &[String]) -> Server {
    Server::spawn_announcing_port(
        "node app.js",
        Command::new("node").arg(script("app.js")).args(args),
    )
    .expect("start the Node test server")
}

/// nginx (a master and its workers) answering `200 ok` on every path but
/// `/static/` (files added with [`Nginx::add_static`]), logging one line per
/// request to its own access log unless configured otherwise.
pub struct Nginx {
    server: Server,
    dir: TempDir,
}

/// The path of nginx's `stub_status` page when [`NginxConfig::status_page`] is on.
pub const NGINX_STATUS_PATH: &str = "/nginx_status";

/// How an [`Nginx`] is set up; the default is what the end-to-end tests use.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    pub workers: u32,
    /// Connections each worker may hold open at once (`worker_connections`,
    /// the listening socket included).
    pub worker_connections: u32,
    /// Every worker runs on this CPU only (`worker_cpu_affinity`).
    pub worker_cpu: Option<u32>,
    /// One line per request in `access.log` (see [`Nginx::access_log_lines`]).
    pub access_log: bool,
    /// Requests served on one keep-alive connection before nginx closes it;
    /// `None` keeps nginx's default (1000).
    pub keepalive_requests: Option<u64>,
    /// `GET` [`NGINX_STATUS_PATH`] answers the `stub_status` page, whose
    /// `requests` counter counts every request nginx has read.
    pub status_page: bool,
    /// `large_client_header_buffers` (e.g. `4 128k`): the buffers a long
    /// request line or header field may take.
    pub large_header_buffers: Option<&'static str>,
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            workers: 1,
            worker_connections: 1024,
            worker_cpu: None,
            access_log: true,
            keepalive_requests: None,
            status_page: false,
            large_header_buffers: None,
        }
    }
}

impl NginxConfig {
    /// nginx.conf for a server on 127.0.0.1:`port` keeping its files in `prefix`.
    fn render(&self, prefix: &str, port: u16) -> String {
        let workers = self.workers;
        let connections = self.worker_connections;
        let mut main = String::new();
        if let Some(cpu) = self.worker_cpu {
            // One bit mask per worker; bit N is CPU N.
            let mask = format!("1{}", "0".repeat(cpu as usize));
            let masks = vec![mask; workers as usize].join(" ");
            main.push_str(&format!("worker_cpu_affinity {masks};\n"));
        }
        let mut http = String::new();
        if self.access_log {
            http.push_str("    log_format simple '$status $request_method $request_uri';\n");
            http.push_str(&format!("    access_log {prefix}/access.log simple;\n"));
        } else {
            http.push_str("    access_log off;\n");
        }
        if let Some(requests) = self.keepalive_requests {
            http.push_str(&format!("    keepalive_requests {requests};\n"));
        }
        if let Some(buffers) = self.large_header_buffers {
            http.push_str(&format!("    large_client_header_buffers {buffers};\n"));
        }
        let status = if self.status_page {
            format!("        location = {NGINX_STATUS_PATH} {{ stub_status; }}\n")
        } else {
            String::new()
        };
        format!(
            r#"daemon off;
master_process on;
worker_processes {workers};
{main}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
{http}    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
{status}        location / {{ return 200 "ok\n"; }}
        location /static/ {{ alias {prefix}/static/; sendfile on; }}
    }}
}}
"#
        )
    }
}

impl Nginx {
    /// A master with one worker.
    pub fn start() -> Nginx {
        Self::with_workers(1)
    }

    /// A master with `workers` worker processes.
    pub fn with_workers(workers: u32) -> Nginx {
        Self::with_config(&NginxConfig {
            workers,
            ..NginxConfig::default()
        })
        .expect("start nginx (installed by `cargo xtask setup`)")
    }

    /// nginx set up as `config` says.
    pub fn with_config(config: &NginxConfig) -> Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        let port = free_port();
        std::fs::create_dir(dir.path().join("static"))?;
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(
            &config_path,
            config.render(&dir.path().display().to_string(), port),
        )?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn nginx")?;
        let process = ChildGuard::new("nginx", child);
        wait_for_port(port, STARTUP_TIMEOUT).with_context(|| {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            format!("nginx error log:\n{log}")
        })?;
        Ok(Nginx {
            server: Server { process, port },
            dir,
        })
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Puts a file nginx serves at `/static/{name}` (with sendfile).
    pub fn add_static(&self, name: &str, content: &[u8]) -> Result<()> {
        std::fs::write(self.dir.path().join("static").join(name), content)?;
        Ok(())
    }

    /// The master's children: its workers, and old workers still finishing
    /// after a reload.
    pub fn workers(&self) -> Vec<u32> {
        children(self.server.pid())
    }

    /// SIGHUP: the master forks new workers and retires the old ones.
    pub fn reload(&self) {
        self.server.process.signal(libc::SIGHUP);
    }

    /// Requests nginx has logged so far.
    pub fn access_log_lines(&self) -> usize {
        self.access_log_lines_except("")
    }

    /// Requests nginx has logged so far, but for those logged with `status`
    /// (e.g. "499": the client closed before the response was written).
    pub fn access_log_lines_except(&self, status: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .map(|log| {
                log.lines()
                    .filter(|l| status.is_empty() || l.split(' ').next() != Some(status))
                    .count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nginx_configs() {
        let default = NginxConfig::default().render("/p", 8080);
        assert_eq!(
            default,
            r#"daemon off;
master_process on;
worker_processes 1;
pid /p/nginx.pid;
error_log /p/error.log warn;
events { worker_connections 1024; }
http {
    log_format simple '$status $request_method $request_uri';
    access_log /p/access.log simple;
    client_body_temp_path /p/client_body;
    proxy_temp_path /p/proxy;
    fastcgi_temp_path /p/fastcgi;
    uwsgi_temp_path /p/uwsgi;
    scgi_temp_path /p/scgi;
    server {
        listen 127.0.0.1:8080;
        location / { return 200 "ok\n"; }
        location /static/ { alias /p/static/; sendfile on; }
    }
}
"#
        );
        let tuned = NginxConfig {
            workers: 2,
            worker_connections: 4096,
            worker_cpu: Some(1),
            access_log: false,
            keepalive_requests: Some(1_000_000),
            status_page: true,
            large_header_buffers: Some("4 128k"),
        }
        .render("/p", 8080);
        assert_eq!(
            tuned,
            r#"daemon off;
master_process on;
worker_processes 2;
worker_cpu_affinity 10 10;
pid /p/nginx.pid;
error_log /p/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    large_client_header_buffers 4 128k;
    client_body_temp_path /p/client_body;
    proxy_temp_path /p/proxy;
    fastcgi_temp_path /p/fastcgi;
    uwsgi_temp_path /p/uwsgi;
    scgi_temp_path /p/scgi;
    server {
        listen 127.0.0.1:8080;
        location = /nginx_status { stub_status; }
        location / { return 200 "ok\n"; }
        location /static/ { alias /p/static/; sendfile on; }
    }
}
"#
        );
    }
}
