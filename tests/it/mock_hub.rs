//! A mock Hugging Face Hub on loopback, for the Hub tests: the routes `llm-mem` uses
//! (`/api/models/{id}/revision/{rev}`, `/{id}/resolve/{rev}/{file}`), answered as the
//! Hub does (X-Error-Code on errors, LFS files redirected to a CDN path that serves byte
//! ranges), and a log of every request so a test can check that nothing asked for more
//! than the safetensors headers. Also a plain HTTP proxy (absolute-form request
//! targets). One thread per connection; every answer closes its connection.
//!
//! Safetensors shards are *virtual*: a shard is its header (8 + N bytes) and a declared
//! total size; bytes past the header read as zeros, so a 13 GB checkpoint costs only its
//! headers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One file of a mock repo.
#[derive(Clone)]
pub enum Content {
    /// Served whole.
    Bytes(Vec<u8>),
    /// A safetensors file: its first 8 + N bytes and its declared size.
    Safetensors { prefix: Vec<u8>, total: u64 },
}

#[derive(Clone)]
pub struct Repo {
    pub commit: String,
    /// Branches and tags that resolve to `commit` (besides the commit itself).
    pub revisions: Vec<String>,
    pub files: BTreeMap<String, Content>,
    /// `Some(token)`: gated; files need `Authorization: Bearer token`.
    pub gated: Option<String>,
    /// Sleep before answering anything of this repo.
    pub delay: Duration,
    /// Answer range requests with the whole file (200), as a server without range
    /// support does.
    pub ignore_range: bool,
}

impl Repo {
    pub fn new(commit: &str) -> Repo {
        Repo {
            commit: commit.to_string(),
            revisions: vec!["main".to_string()],
            files: BTreeMap::new(),
            gated: None,
            delay: Duration::ZERO,
            ignore_range: false,
        }
    }

    pub fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Repo {
        self.files
            .insert(name.to_string(), Content::Bytes(bytes.into()));
        self
    }

    pub fn shard(mut self, name: &str, prefix: Vec<u8>, total: u64) -> Repo {
        self.files
            .insert(name.to_string(), Content::Safetensors { prefix, total });
        self
    }
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Req {
    pub path: String,
    /// The request target was absolute (`GET http://host/...`): it came through a proxy.
    pub proxied: bool,
    pub range: Option<(u64, u64)>,
    pub auth: Option<String>,
    /// Body bytes the mock sent.
    pub sent: u64,
}

pub struct MockHub {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    /// Connections accepted and not yet logged: a client can read its whole answer
    /// before the serving thread records the request.
    in_flight: Arc<AtomicUsize>,
}

impl MockHub {
    /// Start serving `repos` (id → repo) on 127.0.0.1, a free port.
    pub fn start(repos: Vec<(&str, Repo)>) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let repos: Arc<BTreeMap<String, Repo>> = Arc::new(
            repos
                .into_iter()
                .map(|(id, r)| (id.to_string(), r))
                .collect(),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight2 = in_flight.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (repos, log) = (repos.clone(), log2.clone());
                let busy = in_flight2.clone();
                busy.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = serve(conn, &repos, &log);
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        MockHub {
            addr,
            log,
            in_flight,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests served so far, once every accepted connection is logged (waits at
    /// most 10 s for the serving threads).
    pub fn requests(&self) -> Vec<Req> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.log.lock().unwrap().clone()
    }
}

/// An address on loopback where nothing listens (bound, then released).
pub fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    /// Bytes `[from, to]` of a virtual safetensors file.
    Range {
        prefix: Vec<u8>,
        from: u64,
        to: u64,
    },
}

fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Body::Bytes(body.into()),
    }
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    answer(
        status,
        &[("X-Error-Code", code), ("X-Error-Message", message)],
        format!("{{\"error\":\"{message}\"}}"),
    )
}

/// The request line and headers (names lower-cased).
fn read_head(
    reader: &mut impl BufRead,
) -> std::io::Result<(String, String, BTreeMap<String, String>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("/").to_string(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((method, target, headers))
}

fn serve(
    conn: TcpStream,
    repos: &BTreeMap<String, Repo>,
    log: &Mutex<Vec<Req>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let (mut method, mut target, mut headers) = read_head(&mut reader)?;
    let mut proxied = false;
    if method == "CONNECT" {
        // a proxy tunnel (what ureq opens through HTTP_PROXY): the plain-HTTP request to
        // the endpoint follows on the same stream
        (&conn).write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        proxied = true;
        (method, target, headers) = read_head(&mut reader)?;
    }
    let _ = method;
    // a proxy may also receive `GET http://host/path`
    let path = match target.strip_prefix("http://") {
        Some(rest) => {
            proxied = true;
            rest.find('/')
                .map_or("/".to_string(), |i| rest[i..].to_string())
        }
        None => target.clone(),
    };
    let host = headers.get("host").cloned().unwrap_or_default();
    let range = headers.get("range").and_then(|r| {
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    let auth = headers.get("authorization").cloned();
    let a = route(&path, &host, range, auth.as_deref(), repos);
    let mut out = conn;
    let reason = match a.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Other",
    };
    let len = match &a.body {
        Body::Bytes(b) => b.len() as u64,
        Body::Range { from, to, .. } => to - from + 1,
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {len}\r\nConnection: close\r\n",
        a.status
    );
    for (k, v) in &a.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let mut sent = 0u64;
    let mut result = out.write_all(head.as_bytes());
    if result.is_ok() {
        match &a.body {
            Body::Bytes(b) => {
                result = out.write_all(b);
                sent = if result.is_ok() { b.len() as u64 } else { 0 };
            }
            Body::Range { prefix, from, to } => {
                let mut at = *from;
                while at <= *to && result.is_ok() {
                    let end = (*to + 1).min(at + (64 << 10));
                    let chunk: Vec<u8> = (at..end)
                        .map(|i| prefix.get(i as usize).copied().unwrap_or(0))
                        .collect();
                    result = out.write_all(&chunk);
                    if result.is_ok() {
                        sent += chunk.len() as u64;
                    }
                    at = end;
                }
            }
        }
    }
    log.lock().unwrap().push(Req {
        path,
        proxied,
        range,
        auth,
        sent,
    });
    let _ = out.flush();
    Ok(())
}

fn route(
    path: &str,
    host: &str,
    range: Option<(u64, u64)>,
    auth: Option<&str>,
    repos: &BTreeMap<String, Repo>,
) -> Answer {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/models/{org}/{name}/revision/{rev}
    if let ["api", "models", org, name, "revision", rev] = segs.as_slice() {
        let id = format!("{org}/{name}");
        let Some(repo) = repos.get(&id) else {
            // the Hub answers 401 RepoNotFound to an anonymous request for a missing repo
            return error(401, "RepoNotFound", "Repository not found");
        };
        std::thread::sleep(repo.delay);
        let rev = rev.replace("%2F", "/");
        if rev != repo.commit && !repo.revisions.contains(&rev) {
            return error(404, "RevisionNotFound", "Invalid rev id");
        }
        let siblings: Vec<String> = repo
            .files
            .keys()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let body = format!(
            "{{\"id\":\"{id}\",\"sha\":\"{}\",\"gated\":{},\"siblings\":[{}]}}",
            repo.commit,
            if repo.gated.is_some() {
                "\"manual\""
            } else {
                "false"
            },
            siblings.join(",")
        );
        return answer(200, &[("Content-Type", "application/json")], body);
    }
    // /cdn/{org}/{name}/{file...}: the LFS store, no auth, byte ranges
    if let ["cdn", org, name, file @ ..] = segs.as_slice() {
        let id = format!("{org}/{name}");
        let file = file.join("/");
        let Some(Content::Safetensors { prefix, total }) =
            repos.get(&id).and_then(|r| r.files.get(&file))
        else {
            return error(404, "EntryNotFound", "no such object");
        };
        let repo = &repos[&id];
        return match range {
            Some((a, b)) if !repo.ignore_range && a <= b && a < *total => {
                let b = b.min(total - 1);
                Answer {
                    status: 206,
                    headers: vec![
                        ("Content-Range".into(), format!("bytes {a}-{b}/{total}")),
                        ("ETag".into(), "\"cdn-etag\"".into()),
                    ],
                    body: Body::Range {
                        prefix: prefix.clone(),
                        from: a,
                        to: b,
                    },
                }
            }
            _ => Answer {
                status: 200,
                headers: vec![("ETag".into(), "\"cdn-etag\"".into())],
                body: Body::Range {
                    prefix: prefix.clone(),
                    from: 0,
                    to: total - 1,
                },
            },
        };
    }
    // /{org}/{name}/resolve/{rev}/{file...}
    if let [org, name, "resolve", rev, file @ ..] = segs.as_slice() {
        let id = format!("{org}/{name}");
        let Some(repo) = repos.get(&id) else {
            return error(401, "RepoNotFound", "Repository not found");
        };
        std::thread::sleep(repo.delay);
        if let Some(token) = &repo.gated {
            match auth {
                None => return error(401, "GatedRepo", "Access to this model is restricted"),
                Some(a) if a != format!("Bearer {token}") => {
                    return error(403, "GatedRepo", "You are not in the authorized list")
                }
                _ => {}
            }
        }
        if *rev != repo.commit && !repo.revisions.iter().any(|r| r == rev) {
            return error(404, "RevisionNotFound", "Invalid rev id");
        }
        let file = file.join("/");
        return match repo.files.get(&file) {
            None => error(404, "EntryNotFound", "Entry not found"),
            Some(Content::Bytes(b)) => {
                let etag = format!("\"{:016x}\"", fnv(b));
                answer(
                    200,
                    &[("ETag", &etag), ("X-Repo-Commit", &repo.commit)],
                    b.clone(),
                )
            }
            Some(Content::Safetensors { .. }) => {
                // the Hub sends LFS files to another host (its CDN): here `localhost` for
                // `127.0.0.1`, `cdn.invalid` for `hub.invalid`
                let cdn = host
                    .replace("127.0.0.1", "localhost")
                    .replace("hub.invalid", "cdn.invalid");
                let loc = format!("http://{cdn}/cdn/{id}/{file}");
                answer(
                    302,
                    &[
                        ("Location", &loc),
                        ("X-Linked-Etag", "\"0123abcd\""),
                        ("X-Repo-Commit", &repo.commit),
                    ],
                    Vec::new(),
                )
            }
        };
    }
    error(404, "", "no such route")
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

// ---------------------------------------------------------------- safetensors headers

/// The first 8 + N bytes of a safetensors file holding `tensors` (name, dtype, shape),
/// laid out one after another, and the file's total size.
pub fn safetensors_prefix(tensors: &[(String, &str, Vec<u64>)]) -> (Vec<u8>, u64) {
    let mut at = 0u64;
    let mut entries = Vec::new();
    for (name, dtype, shape) in tensors {
        let size: u64 = match *dtype {
            "F32" | "I32" => 4,
            "BF16" | "F16" => 2,
            _ => 1,
        };
        let n = shape.iter().product::<u64>() * size;
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{at},{}]}}",
            at + n
        ));
        at += n;
    }
    let json = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\"}},{}}}",
        entries.join(",")
    );
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    let total = out.len() as u64 + at;
    (out, total)
}

/// The tensors of a llama-style checkpoint (transformers names), BF16.
pub struct Llama {
    pub hidden: u64,
    pub inter: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub vocab: u64,
    pub tied: bool,
    pub qkv_bias: bool,
}

impl Llama {
    /// Layers `layers` (a range of indices), plus the embedding in the first shard and
    /// the final norm and head in the last.
    pub fn tensors(
        &self,
        layers: std::ops::Range<u64>,
        first: bool,
        last: bool,
    ) -> Vec<(String, &'static str, Vec<u64>)> {
        let h = self.hidden;
        let d = h / self.heads;
        let kv = self.kv_heads * d;
        let mut t = Vec::new();
        if first {
            t.push((
                "model.embed_tokens.weight".to_string(),
                "BF16",
                vec![self.vocab, h],
            ));
        }
        for i in layers {
            let p = format!("model.layers.{i}");
            t.push((format!("{p}.input_layernorm.weight"), "BF16", vec![h]));
            t.push((
                format!("{p}.post_attention_layernorm.weight"),
                "BF16",
                vec![h],
            ));
            for (n, out) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                t.push((format!("{p}.self_attn.{n}.weight"), "BF16", vec![out, h]));
                if self.qkv_bias {
                    t.push((format!("{p}.self_attn.{n}.bias"), "BF16", vec![out]));
                }
            }
            t.push((format!("{p}.self_attn.o_proj.weight"), "BF16", vec![h, h]));
            t.push((
                format!("{p}.mlp.gate_proj.weight"),
                "BF16",
                vec![self.inter, h],
            ));
            t.push((
                format!("{p}.mlp.up_proj.weight"),
                "BF16",
                vec![self.inter, h],
            ));
            t.push((
                format!("{p}.mlp.down_proj.weight"),
                "BF16",
                vec![h, self.inter],
            ));
        }
        if last {
            t.push(("model.norm.weight".to_string(), "BF16", vec![h]));
            if !self.tied {
                t.push(("lm_head.weight".to_string(), "BF16", vec![self.vocab, h]));
            }
        }
        t
    }

    /// All parameters, tied weights once.
    pub fn params(&self) -> u64 {
        self.tensors(0..self.layers, true, true)
            .iter()
            .map(|(_, _, s)| s.iter().product::<u64>())
            .sum()
    }
}
