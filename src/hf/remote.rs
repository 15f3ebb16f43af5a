//! The Hugging Face Hub over HTTP: a model's `config.json` (and the small files beside
//! it) and only the *headers* of its safetensors shards — never the weights.
//!
//! What is asked, mirroring `huggingface_hub` 0.26 (`hf_api.py` `model_info`,
//! `file_download.py` `hf_hub_url` / `get_hf_file_metadata`, `constants.py` for the
//! environment) and hf-mem's range reads:
//!
//! 1. `GET {endpoint}/api/models/{org}/{name}/revision/{rev}` → the commit `sha` the
//!    revision points at and the file list (`siblings`);
//! 2. `GET {endpoint}/{org}/{name}/resolve/{sha}/{file}` for `config.json`,
//!    `generation_config.json`, `preprocessor_config.json` and
//!    `model.safetensors.index.json` when the repo has them (each at most
//!    [`MAX_SMALL_FILE`] bytes);
//! 3. for each safetensors shard, `Range: bytes=0-7` (the header length N, little-endian
//!    u64), then `Range: bytes=8-{7+N}` (the JSON header). Redirects (the Hub sends LFS
//!    files to a CDN) keep the `Range` header and drop `Authorization` when the host
//!    changes. A server that ignores `Range` (200 instead of 206) has its body read only
//!    up to the bytes asked for, then the connection is dropped.
//!
//! Environment (`huggingface_hub/constants.py`): `HF_ENDPOINT` (default
//! `https://huggingface.co`), `HF_TOKEN`, else the token file `HF_TOKEN_PATH`, else
//! `$HF_HOME/token` (`~/.cache/huggingface/token`); `HF_HUB_OFFLINE` (`1`, `ON`, `YES`,
//! `TRUE`: no request at all); `HF_HUB_ETAG_TIMEOUT` (metadata) and
//! `HF_HUB_DOWNLOAD_TIMEOUT` (files), seconds, default 10, used as connect and per-read
//! timeouts; `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and `NO_PROXY` (ureq reads them).
//!
//! The only file in the crate that opens a network connection (`tests/it/tidy.rs`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hf::safetensors;

/// The Hub, when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// `huggingface_hub`'s default for both timeouts, seconds.
pub const DEFAULT_TIMEOUT_S: f64 = 10.0;
/// Largest small file (config, index) fetched whole: 64 MiB (the largest index files
/// on the Hub, of models with 100k+ tensors, are a few MiB).
pub const MAX_SMALL_FILE: u64 = 64 << 20;
/// Shard headers fetched at once.
const PARALLEL_SHARDS: usize = 8;

/// The small files fetched whole when the repo has them; `config.json` is required.
pub const SMALL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    safetensors::INDEX_FILE,
];

/// A Hub token and where it was read from (for messages; the value is never shown).
#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub source: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

/// How to reach the Hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Base URL without a trailing `/`.
    pub endpoint: String,
    pub token: Option<Token>,
    /// `HF_HUB_OFFLINE`: never connect.
    pub offline: bool,
    /// Connect and per-read timeout of the metadata request.
    pub metadata_timeout: Duration,
    /// Connect and per-read timeout of file and header requests.
    pub download_timeout: Duration,
    /// Use the proxy named by the environment (`HTTPS_PROXY`, ..., `NO_PROXY`).
    pub env_proxy: bool,
}

impl HubConfig {
    /// The public Hub, no token, online, default timeouts, no proxy.
    pub fn new(endpoint: &str) -> HubConfig {
        HubConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
            offline: false,
            metadata_timeout: Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
            download_timeout: Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
            env_proxy: false,
        }
    }

    /// From the process environment (see the module doc). A malformed value (a timeout
    /// that is not a positive number, an endpoint that is not http(s)) is an error
    /// naming the variable.
    pub fn from_env() -> Result<HubConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        Self::from_vars(&var, &read)
    }

    /// [`from_env`](Self::from_env) over any variable lookup and file reader (tests).
    pub fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> Result<HubConfig> {
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(Error::invalid(
                "HF_ENDPOINT",
                endpoint,
                "an http:// or https:// URL, e.g. https://huggingface.co",
            ));
        }
        let mut c = HubConfig::new(endpoint);
        c.env_proxy = true;
        // constants.py `_is_true`: value.upper() in {"1", "ON", "YES", "TRUE"}
        c.offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        for (key, slot) in [
            ("HF_HUB_ETAG_TIMEOUT", &mut c.metadata_timeout),
            ("HF_HUB_DOWNLOAD_TIMEOUT", &mut c.download_timeout),
        ] {
            if let Some(v) = var(key) {
                *slot = parse_timeout(key, &v)?;
            }
        }
        c.token = match var("HF_TOKEN") {
            Some(t) => Some(Token {
                value: t.trim().to_string(),
                source: "HF_TOKEN".to_string(),
            }),
            None => token_file(var).and_then(|p| {
                let t = read(&p)?.trim().to_string();
                (!t.is_empty()).then(|| Token {
                    value: t,
                    source: p.display().to_string(),
                })
            }),
        };
        Ok(c)
    }

    fn host(&self) -> &str {
        let rest = self.endpoint.split("://").nth(1).unwrap_or(&self.endpoint);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// `HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`.
fn token_file(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = var("HF_TOKEN_PATH") {
        return Some(PathBuf::from(p));
    }
    if let Some(h) = var("HF_HOME") {
        return Some(PathBuf::from(h).join("token"));
    }
    let home = var("HOME").or_else(|| var("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".cache/huggingface/token"))
}

fn parse_timeout(key: &str, v: &str) -> Result<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| Error::invalid(key, v, "a number of seconds in (0, 86400], e.g. 10"))
}

/// `org/name` with an optional `@revision` (a branch, tag or commit; default `main`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub revision: String,
}

impl RepoRef {
    /// Parse `org/name[@rev]`. The id follows `huggingface_hub`'s `validate_repo_id`
    /// (`utils/_validators.py`): letters, digits, `-`, `_`, `.`; no `--` or `..`; at most
    /// 96 characters; not starting or ending with `-` or `.`. `None` when `s` is not such
    /// an id.
    pub fn parse(s: &str) -> Option<RepoRef> {
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (s, "main"),
        };
        let (org, name) = id.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        let rev_ok = !revision.is_empty()
            && revision.len() <= 256
            && !revision
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            && revision
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '\\' | '?' | '#' | '%'));
        (part_ok(org)
            && part_ok(name)
            && !id.contains("--")
            && !id.contains("..")
            && id.len() <= 96
            && rev_ok)
            .then(|| RepoRef {
                id: id.to_string(),
                revision: revision.to_string(),
            })
    }

    /// `org/name@rev`, or `org/name` for `main`.
    pub fn display(&self) -> String {
        if self.revision == "main" {
            self.id.clone()
        } else {
            format!("{}@{}", self.id, self.revision)
        }
    }
}

/// A small file fetched whole.
#[derive(Clone, Debug)]
pub struct FetchedFile {
    /// Path in the repo (`config.json`).
    pub name: String,
    pub bytes: Vec<u8>,
    /// The content id the cache names its blob with (`X-Linked-Etag` or `ETag`, quotes
    /// and `W/` removed), when the server sent a usable one.
    pub etag: Option<String>,
}

/// The header of one safetensors shard: its first `8 + N` bytes, verbatim.
#[derive(Clone, Debug)]
pub struct FetchedHeader {
    /// Path in the repo (`model-00001-of-00004.safetensors`).
    pub name: String,
    pub prefix: Vec<u8>,
    /// The whole shard's size in bytes (from `Content-Range`; `None` when the server did
    /// not say), never downloaded.
    pub file_size: Option<u64>,
    pub etag: Option<String>,
}

/// What [`fetch`] brought: enough to estimate the model exactly, no weights.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub repo: RepoRef,
    pub endpoint: String,
    /// The commit the revision pointed at.
    pub commit: String,
    pub files: Vec<FetchedFile>,
    pub headers: Vec<FetchedHeader>,
    /// What was not there (no safetensors checkpoint, ...), for the caller to show.
    pub notes: Vec<String>,
    /// Bytes received in bodies, all requests together.
    pub bytes_received: u64,
    pub requests: u64,
}

/// Fetch `repo`'s metadata and shard headers (see the module doc). Errors
/// ([`Error::Hub`]) say what to do: offline, gated (401/403: accept the licence, set
/// `HF_TOKEN`), not found (404: repo, revision or file), no network, timeout.
pub fn fetch(repo: &RepoRef, cfg: &HubConfig) -> Result<Fetched> {
    if cfg.offline {
        return Err(hub_err(
            repo,
            "HF_HUB_OFFLINE is set, so the Hub was not asked; unset it (or fetch on a machine with network) to fetch the config and safetensors headers",
        ));
    }
    let client = Client::new(cfg);
    let info_url = format!(
        "{}/api/models/{}/revision/{}",
        cfg.endpoint,
        repo.id,
        encode(&repo.revision, false)
    );
    let (info, info_bytes, _) =
        client.get_small(repo, &info_url, cfg.metadata_timeout, "model info")?;
    let info: Value = serde_json::from_slice(&info)
        .map_err(|e| hub_err(repo, format!("{info_url}: the answer is not JSON: {e}")))?;
    let commit = info
        .get("sha")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| hub_err(repo, format!("{info_url}: the answer has no commit `sha`")))?
        .to_string();
    let siblings: Vec<String> = info
        .get("siblings")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            hub_err(
                repo,
                format!("{info_url}: the answer has no file list `siblings`"),
            )
        })?
        .iter()
        .filter_map(|s| s.get("rfilename")?.as_str().map(str::to_string))
        .collect();
    let has = |f: &str| siblings.iter().any(|s| s == f);
    if !has("config.json") {
        let mut shown: Vec<&str> = siblings.iter().map(String::as_str).take(8).collect();
        if siblings.len() > 8 {
            shown.push("...");
        }
        return Err(hub_err(
            repo,
            format!(
                "the repo has no config.json at {} (commit {commit}), so it is not a transformers model (a GGUF-only or adapter-only repo?); its files: {}",
                repo.revision,
                if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
            ),
        ));
    }
    let file_url = |f: &str| {
        format!(
            "{}/{}/resolve/{commit}/{}",
            cfg.endpoint,
            repo.id,
            encode(f, true)
        )
    };
    let mut out = Fetched {
        repo: repo.clone(),
        endpoint: cfg.endpoint.clone(),
        commit: commit.clone(),
        files: Vec::new(),
        headers: Vec::new(),
        notes: Vec::new(),
        bytes_received: info_bytes,
        requests: 1,
    };
    for &f in SMALL_FILES.iter().filter(|f| has(f)) {
        let (bytes, n, etag) = client.get_small(repo, &file_url(f), cfg.download_timeout, f)?;
        out.bytes_received += n;
        out.requests += 1;
        out.files.push(FetchedFile {
            name: f.to_string(),
            bytes,
            etag,
        });
    }
    let shards: Vec<String> = if let Some(index) =
        out.files.iter().find(|f| f.name == safetensors::INDEX_FILE)
    {
        let text = String::from_utf8_lossy(&index.bytes);
        let where_ = format!("{} {}", repo.display(), safetensors::INDEX_FILE);
        safetensors::parse_index(&text, Path::new(&where_))?
            .into_keys()
            .collect()
    } else if has(safetensors::SINGLE_FILE) {
        vec![safetensors::SINGLE_FILE.to_string()]
    } else {
        let others: Vec<&str> = siblings
            .iter()
            .map(String::as_str)
            .filter(|s| {
                s.ends_with(".bin")
                    || s.ends_with(".safetensors")
                    || s.ends_with(".gguf")
                    || s.ends_with(".pt")
            })
            .take(4)
            .collect();
        out.notes.push(format!(
            "{}: no model.safetensors or model.safetensors.index.json at commit {commit}{}; parameters are counted from config.json",
            repo.display(),
            if others.is_empty() { String::new() } else { format!(" (it has {})", others.join(", ")) }
        ));
        Vec::new()
    };
    let chunk = shards.len().div_ceil(PARALLEL_SHARDS).max(1);
    let results: Vec<Result<Vec<(FetchedHeader, u64, u64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .chunks(chunk)
            .map(|names| {
                let client = &client;
                let file_url = &file_url;
                s.spawn(move || {
                    names
                        .iter()
                        .map(|n| client.get_header(repo, n, &file_url(n), cfg.download_timeout))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(hub_err(repo, "a header download thread panicked")))
            })
            .collect()
    });
    for r in results {
        for (h, bytes, requests) in r? {
            out.bytes_received += bytes;
            out.requests += requests;
            out.headers.push(h);
        }
    }
    out.headers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn hub_err(repo: &RepoRef, message: impl Into<String>) -> Error {
    Error::Hub {
        model: repo.display(),
        message: message.into(),
    }
}

/// Percent-encode a URL path part (RFC 3986 unreserved characters kept; `/` kept when
/// `keep_slash`, as `huggingface_hub` quotes file names but not revisions' slashes).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The blob name `huggingface_hub` derives from a response (`X-Linked-Etag` for LFS
/// files, else `ETag`; `W/` and quotes removed), when it is a safe file name.
fn etag_of(resp: &ureq::http::Response<ureq::Body>) -> Option<String> {
    let h = resp.headers();
    let raw = h
        .get("x-linked-etag")
        .or_else(|| h.get("etag"))?
        .to_str()
        .ok()?;
    let e = raw.trim().trim_start_matches("W/").trim_matches('"');
    (!e.is_empty()
        && e.len() <= 128
        && e.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then(|| e.to_string())
}

struct Client<'a> {
    cfg: &'a HubConfig,
    agent: ureq::Agent,
}

impl<'a> Client<'a> {
    fn new(cfg: &'a HubConfig) -> Client<'a> {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(if cfg.env_proxy {
                ureq::Proxy::try_from_env()
            } else {
                None
            })
            .max_redirects(10)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(format!("llm-mem/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            cfg,
            agent: config.into(),
        }
    }

    /// One GET; `range` adds `Range: bytes=a-b`. Non-2xx statuses become errors that say
    /// what to do.
    fn get(
        &self,
        repo: &RepoRef,
        url: &str,
        timeout: Duration,
        range: Option<(u64, u64)>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self
            .agent
            .get(url)
            .config()
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .build();
        if let Some(t) = &self.cfg.token {
            req = req.header("Authorization", format!("Bearer {}", t.value));
        }
        if let Some((a, b)) = range {
            req = req.header("Range", format!("bytes={a}-{b}"));
        }
        let resp = req
            .call()
            .map_err(|e| self.transport_err(repo, url, timeout, &e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        Err(self.status_err(repo, url, what, &resp))
    }

    /// GET a whole small file: (bytes, bytes received, etag).
    fn get_small(
        &self,
        repo: &RepoRef,
        url: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<(Vec<u8>, u64, Option<String>)> {
        let mut resp = self.get(repo, url, timeout, None, what)?;
        let etag = etag_of(&resp);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_SMALL_FILE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => hub_err(
                    repo,
                    format!("{url}: {what} is larger than the {MAX_SMALL_FILE}-byte limit for a metadata file"),
                ),
                e => self.transport_err(repo, url, timeout, &e),
            })?;
        let n = bytes.len() as u64;
        Ok((bytes, n, etag))
    }

    /// Bytes `[from, from + len)` of `url`: (bytes, bytes received, total file size,
    /// etag). Reads no more than `from + len` bytes even from a server that ignores
    /// `Range`; the total is `u64::MAX` when the server did not say.
    fn get_range(
        &self,
        repo: &RepoRef,
        url: &str,
        timeout: Duration,
        from: u64,
        len: u64,
        what: &str,
    ) -> Result<(Vec<u8>, u64, u64, Option<String>)> {
        let mut resp = self.get(repo, url, timeout, Some((from, from + len - 1)), what)?;
        let etag = etag_of(&resp);
        let status = resp.status().as_u16();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (skip, total) = if status == 206 {
            // Content-Range: bytes a-b/total (RFC 9110 §14.4)
            let cr = header("content-range").unwrap_or_default();
            let parsed = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .and_then(|(span, total)| {
                    let (a, _) = span.split_once('-')?;
                    Some((
                        a.trim().parse::<u64>().ok()?,
                        total.trim().parse::<u64>().ok()?,
                    ))
                });
            match parsed {
                Some((a, total)) if a == from => (0, total),
                _ => {
                    return Err(hub_err(
                        repo,
                        format!("{url}: asked for bytes {from}-{} of {what}, got a 206 with Content-Range {cr:?}", from + len - 1),
                    ))
                }
            }
        } else {
            // 200: the whole file follows; skip to `from`, read `len`, drop the rest
            let total = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(u64::MAX);
            (from, total)
        };
        let mut body = resp.body_mut().as_reader();
        if skip > 0 {
            std::io::copy(&mut (&mut body).take(skip), &mut std::io::sink())
                .map_err(|e| hub_err(repo, format!("{url}: reading {what}: {e}")))?;
        }
        let mut buf = Vec::with_capacity(len.min(1 << 20) as usize);
        (&mut body)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| hub_err(repo, format!("{url}: reading {what}: {e}")))?;
        if (buf.len() as u64) < len {
            return Err(hub_err(
                repo,
                format!("{url}: asked for {len} bytes of {what} at offset {from}, got {} (the file is {total} bytes)", buf.len()),
            ));
        }
        Ok((buf, skip + len, total, etag))
    }

    /// The header of shard `name`: two range requests. (header, bytes received, requests)
    fn get_header(
        &self,
        repo: &RepoRef,
        name: &str,
        url: &str,
        timeout: Duration,
    ) -> Result<(FetchedHeader, u64, u64)> {
        let what = format!("{name} (header length)");
        let (len8, got1, total, etag) = self.get_range(repo, url, timeout, 0, 8, &what)?;
        let n = u64::from_le_bytes(len8[..8].try_into().expect("8 bytes read"));
        let shown = Path::new(url);
        if n > safetensors::MAX_HEADER_BYTES {
            return Err(Error::Safetensors {
                path: shown.to_path_buf(),
                message: format!(
                    "header length {n} bytes exceeds the {}-byte limit",
                    safetensors::MAX_HEADER_BYTES
                ),
            });
        }
        if total != u64::MAX && n > total.saturating_sub(8) {
            return Err(Error::Safetensors {
                path: shown.to_path_buf(),
                message: format!(
                    "header length {n} bytes runs past the end of the file ({total} bytes)"
                ),
            });
        }
        if n == 0 {
            return Err(Error::Safetensors {
                path: shown.to_path_buf(),
                message: "header length is 0".to_string(),
            });
        }
        let (header, got2, _, _) =
            self.get_range(repo, url, timeout, 8, n, &format!("{name} (header)"))?;
        let data_len = if total == u64::MAX {
            u64::MAX
        } else {
            total - 8 - n
        };
        // refuse a corrupt header now, naming its URL
        safetensors::parse_header(&header, data_len, shown)?;
        let mut prefix = len8;
        prefix.extend_from_slice(&header);
        Ok((
            FetchedHeader {
                name: name.to_string(),
                prefix,
                file_size: (total != u64::MAX).then_some(total),
                etag,
            },
            got1 + got2,
            2,
        ))
    }

    fn transport_err(
        &self,
        repo: &RepoRef,
        url: &str,
        timeout: Duration,
        e: &ureq::Error,
    ) -> Error {
        let hint =
            "set HF_HUB_OFFLINE=1 to use only the local cache, or HF_ENDPOINT to use a mirror";
        let host = self.cfg.host();
        let message = match e {
            ureq::Error::Timeout(_) => format!(
                "no answer from {host} within {} s ({url}); raise HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT on a slow link, or {hint}",
                timeout.as_secs_f64()
            ),
            ureq::Error::HostNotFound => format!("cannot resolve {host}: no network or no DNS? {hint}"),
            ureq::Error::ConnectionFailed => format!("cannot connect to {host}: no network, or a proxy is needed (HTTPS_PROXY)? {hint}"),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => format!(
                "no answer from {host} within {} s ({url}); raise HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT on a slow link, or {hint}",
                timeout.as_secs_f64()
            ),
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::NetworkUnreachable
                        | std::io::ErrorKind::HostUnreachable
                ) =>
            {
                format!("cannot connect to {host} ({io}): no network, or a proxy is needed (HTTPS_PROXY)? {hint}")
            }
            ureq::Error::Io(io) => format!("cannot reach {host} ({url}): {io}; {hint}"),
            other => format!("{url}: {other}; {hint}"),
        };
        hub_err(repo, message)
    }

    fn status_err(
        &self,
        repo: &RepoRef,
        url: &str,
        what: &str,
        resp: &ureq::http::Response<ureq::Body>,
    ) -> Error {
        let status = resp.status().as_u16();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        // huggingface_hub/utils/_http.py hf_raise_for_status: X-Error-Code first
        let code = header("x-error-code");
        let server = header("x-error-message");
        let server = if server.is_empty() {
            String::new()
        } else {
            format!(" (the Hub says: {server})")
        };
        let page = format!("{}/{}", self.cfg.endpoint, repo.id);
        let token = match &self.cfg.token {
            Some(t) => format!("the token from {}", t.source),
            None => "no token".to_string(),
        };
        let anonymous = if self.cfg.token.is_none() {
            "; a private or gated repo answers this too when no token is sent (set HF_TOKEN)"
        } else {
            ""
        };
        let message = match (status, code) {
            (_, "RepoNotFound") | (404, "") => format!(
                "no model {} on {} ({status}){server}: check the spelling (org/name, case-sensitive){anonymous}",
                repo.id, self.cfg.endpoint
            ),
            (_, "RevisionNotFound") => format!(
                "revision {:?} of {} does not exist ({status}){server}: name a branch, a tag or a commit of the repo",
                repo.revision, repo.id
            ),
            (_, "EntryNotFound") | (404, _) => {
                format!("{what} is not in {} at this commit ({status}, {url}){server}", repo.id)
            }
            (401, c) if self.cfg.token.is_some() && c != "GatedRepo" => format!(
                "{token} was refused for {} ({status}){server}: it is invalid or expired; make a new read token at {}/settings/tokens",
                repo.id, self.cfg.endpoint
            ),
            (_, "GatedRepo") | (401 | 403, _) if self.cfg.token.is_some() => format!(
                "{} is gated and {token} has no access to it ({status}){server}: accept its licence at {page} with the account the token belongs to (approval can take a while), or use a token with read access",
                repo.id
            ),
            (_, "GatedRepo") | (401 | 403, _) => format!(
                "{} is gated or private and {token} was sent ({status}){server}: accept its licence at {page}, then set HF_TOKEN (or run `huggingface-cli login`, which writes $HF_HOME/token)",
                repo.id
            ),
            (429, _) => format!(
                "{} is rate-limiting requests ({status}){server}; retry later, or set HF_TOKEN",
                self.cfg.host()
            ),
            (s, _) if s >= 500 => format!(
                "{} answered {s} for {url}{server}; the Hub may be down, retry later",
                self.cfg.host()
            ),
            (s, _) => format!("{} answered {s} for {url}{server}", self.cfg.host()),
        };
        hub_err(repo, message)
    }
}
