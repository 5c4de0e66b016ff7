//! `mcpfleet._native`: the library's own client (`mcpfleet::client`, the one the CLI
//! uses) for Python. Every request is a [`Pending`]: `wait()` blocks with the GIL
//! released, `await` runs it on the one shared tokio runtime. Answers are the JSON
//! the CLI prints with `-o json`; the typed Python package (mcpfleet/) turns them into
//! objects, and each [`ClientError`] into its exception class (mcpfleet/_errors.py).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use mcpfleet::client::{json as views, Client, ClientError, ErrorKind, SpecInput, Watch};
use mcpfleet::env::tls::Tls;

/// How often a blocked `wait()` looks for a signal (Ctrl-C) to raise.
const SIGNAL_CHECK_MS: u64 = 100;

type Answer = Result<Option<String>, ClientError>;

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// The exception class for an error, with the node's one-line reason.
fn to_py_err(error: ClientError) -> PyErr {
    Python::attach(|py| {
        let class = match error.kind() {
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::ResourceExhausted => "ResourceExhausted",
            ErrorKind::Other => "McpfleetError",
        };
        let made = py
            .import("mcpfleet._errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.call1((error.reason(), error.leader_hint(), error.to_string())));
        match made {
            Ok(value) => PyErr::from_value(value),
            Err(failed) => failed,
        }
    })
}

fn json_text(value: serde_json::Value) -> Answer {
    Ok(Some(value.to_string()))
}

fn bad_answer(reason: String) -> ClientError {
    ClientError::BadAnswer(reason)
}

/// One request on its way: `wait()` for it, or `await` it, once.
#[pyclass(module = "mcpfleet._native")]
struct Pending {
    future: Mutex<Option<BoxFuture<'static, Answer>>>,
}

impl Pending {
    fn new(future: impl std::future::Future<Output = Answer> + Send + 'static) -> Pending {
        Pending {
            future: Mutex::new(Some(Box::pin(future))),
        }
    }

    fn take(&self) -> PyResult<BoxFuture<'static, Answer>> {
        self.future
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this request was already waited for"))
    }
}

#[pymethods]
impl Pending {
    /// Blocks until the answer comes, the GIL released; a signal (Ctrl-C) raises.
    fn wait(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut future = self.take()?;
        loop {
            let step = py.detach(|| {
                let step = Duration::from_millis(SIGNAL_CHECK_MS);
                // The timer is made inside the runtime, which drives it.
                runtime().block_on(async { tokio::time::timeout(step, &mut future).await })
            });
            match step {
                Ok(answer) => return answer.map_err(to_py_err),
                // Dropping the future on a signal cancels the request.
                Err(_) => py.check_signals()?,
            }
        }
    }

    fn __await__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let future = self.take()?;
        let awaitable = pyo3_async_runtimes::tokio::future_into_py(py, async move {
            future.await.map_err(to_py_err)
        })?;
        awaitable.call_method0("__await__")
    }
}

/// A client of one cluster (`mcpfleet.Client` and `mcpfleet.AsyncClient` wrap it).
#[pyclass(module = "mcpfleet._native", frozen)]
struct NativeClient {
    inner: Arc<Client>,
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (endpoints, timeout_seconds, cacert=None, cert=None, key=None, token=None))]
    fn new(
        endpoints: Vec<String>,
        timeout_seconds: f64,
        cacert: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        token: Option<String>,
    ) -> PyResult<NativeClient> {
        if !(timeout_seconds.is_finite() && timeout_seconds > 0.0 && timeout_seconds <= 86_400.0) {
            return Err(PyValueError::new_err(format!(
                "timeout must be above 0 and at most 86400 seconds, not {timeout_seconds}"
            )));
        }
        let tls = Tls::load_given(
            cacert.as_deref(),
            cert.as_deref(),
            key.as_deref(),
            ["cacert", "cert", "key"],
        )
        .map_err(|e| to_py_err(ClientError::Invalid(e.to_string())))?;
        let inner = Client::new(endpoints, Duration::from_secs_f64(timeout_seconds))
            .map_err(to_py_err)?
            .with_tls(tls)
            .with_token(token.as_deref())
            .map_err(to_py_err)?;
        Ok(NativeClient {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints().to_vec()
    }

    /// Writes a server from its spec as JSON; answers the server as written.
    #[pyo3(signature = (spec_json, expected_revision=None))]
    fn put_server(&self, spec_json: String, expected_revision: Option<u64>) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            let spec = SpecInput::from_json(&spec_json)?.into_proto();
            let name = spec.name.clone();
            let response = client.put_server(spec, expected_revision).await?;
            let server = match response.server {
                Some(server) => server,
                // Changed again before the answer was made: what holds now.
                None => client.get_server(&name, false).await?,
            };
            json_text(views::server(server).map_err(bad_answer)?)
        })
    }

    #[pyo3(signature = (name, stale=false))]
    fn get_server(&self, name: String, stale: bool) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            let server = client.get_server(&name, stale).await?;
            json_text(views::server(server).map_err(bad_answer)?)
        })
    }

    #[pyo3(signature = (stale=false))]
    fn servers(&self, stale: bool) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            let servers = client.list_servers(stale).await?;
            json_text(views::servers(servers).map_err(bad_answer)?)
        })
    }

    /// Answers the revision of the delete.
    #[pyo3(signature = (name, expected_revision=None))]
    fn delete_server(&self, name: String, expected_revision: Option<u64>) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            let revision = client.delete_server(&name, expected_revision).await?;
            json_text(revision.into())
        })
    }

    #[pyo3(signature = (stale=false))]
    fn status(&self, stale: bool) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move { json_text(views::fleet(&client.fleet_status(stale).await?)) })
    }

    #[pyo3(signature = (name, stale=false))]
    fn server_status(&self, name: String, stale: bool) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            let status = client.server_status(&name, stale).await?;
            json_text(views::server_status(&name, &status))
        })
    }

    fn cluster_status(&self) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move { json_text(views::cluster(&client.cluster_status().await?)) })
    }

    /// Sets a node's admin state ("draining" or "active"); answers the revision.
    fn set_node_status(&self, id: u64, status: String) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move { json_text(client.set_node_status(id, &status).await?.into()) })
    }

    #[pyo3(signature = (server=None))]
    fn tools(&self, server: Option<String>) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            json_text(views::tools(&client.list_tools(server.as_deref()).await?))
        })
    }

    /// Calls a tool; answers the MCP `CallToolResult` as JSON.
    #[pyo3(signature = (server, tool, arguments_json, timeout_ms=0))]
    fn call(
        &self,
        server: String,
        tool: String,
        arguments_json: String,
        timeout_ms: u64,
    ) -> Pending {
        let client = self.inner.clone();
        Pending::new(async move {
            let result = client
                .call_tool(&server, &tool, &arguments_json, timeout_ms)
                .await?;
            Ok(Some(result))
        })
    }

    /// A watch of every change with a revision above `from_revision` (as far back as
    /// the node keeps them), then of live changes. Its `open()` request opens it.
    #[pyo3(signature = (from_revision=0))]
    fn watch(&self, from_revision: u64) -> NativeWatch {
        let client = self.inner.clone();
        let stream = Arc::new(tokio::sync::Mutex::new(None));
        let opened = stream.clone();
        let opening = Pending::new(async move {
            let watch = client.watch(from_revision).await?;
            *opened.lock().await = Some(watch);
            Ok(None)
        });
        NativeWatch {
            opening: Mutex::new(Some(opening)),
            stream,
            closed: tokio::sync::watch::channel(false).0,
        }
    }
}

/// A watch stream. `open()` is the request that opens it; then each `next()` answers
/// the next event's JSON, or None when the node ends the stream.
#[pyclass(module = "mcpfleet._native", frozen)]
struct NativeWatch {
    opening: Mutex<Option<Pending>>,
    stream: Arc<tokio::sync::Mutex<Option<Watch>>>,
    /// Set by `close`, which must not wait for a `next` that is waiting for an event.
    closed: tokio::sync::watch::Sender<bool>,
}

#[pymethods]
impl NativeWatch {
    fn open(&self) -> PyResult<Pending> {
        self.opening
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this watch was already opened"))
    }

    fn next(&self) -> Pending {
        let stream = self.stream.clone();
        let mut closed = self.closed.subscribe();
        Pending::new(async move {
            if *closed.borrow_and_update() {
                return Ok(None);
            }
            let mut stream = stream.lock().await;
            let Some(watch) = stream.as_mut() else {
                return Ok(None);
            };
            let event = tokio::select! {
                event = watch.next() => event?,
                _ = closed.changed() => None,
            };
            match event {
                Some(event) => json_text(views::watch_event(event).map_err(bad_answer)?),
                None => {
                    // Ended by the node or by `close`: the stream is dropped.
                    *stream = None;
                    Ok(None)
                }
            }
        })
    }

    /// Ends the stream; a `next` waiting for an event answers None.
    fn close(&self) {
        self.closed.send_replace(true);
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_class::<NativeWatch>()?;
    m.add_class::<Pending>()?;
    m.add(
        "DEFAULT_TIMEOUT_SECONDS",
        mcpfleet::client::DEFAULT_TIMEOUT_MS as f64 / 1000.0,
    )?;
    Ok(())
}
