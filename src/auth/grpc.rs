//! Auth on the gRPC client API: a tower layer in front of every service of the port,
//! which checks the requests of `mcpfleet.v1.Registry` only (the node-to-node
//! services are for nodes, which mutual TLS authenticates). Each method needs the role
//! `required_role` gives it; the principal goes into the request's extensions, where
//! the API finds it for checks that depend on the request (which tools a caller may
//! call or see).

use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::Status;

use super::{AuthError, Authenticator};
use crate::registry::Role;

/// The client API's path prefix.
const CLIENT_API: &str = "/mcpfleet.v1.Registry/";

/// The role each method of the client API needs; `None` for the one that needs no
/// token (the bootstrap, which works only while the cluster has none). A method not
/// named here needs `Admin`, so a new method is closed until it is given its role.
pub fn required_role(method: &str) -> Option<Role> {
    Some(match method {
        "BootstrapToken" => return None,
        "GetServer" | "ListServers" | "WatchServers" | "ClusterStatus" | "ServerStatus"
        | "FleetStatus" | "ListTools" => Role::Reader,
        "CallTool" => Role::Caller,
        "PutServer" | "PutServers" | "DeleteServer" | "SetNodeStatus" => Role::Operator,
        _ => Role::Admin,
    })
}

/// The gRPC status of a refusal.
pub fn status_from_auth_error(error: &AuthError) -> Status {
    let message = error.to_string();
    match error {
        AuthError::Missing | AuthError::Malformed | AuthError::Unknown { .. } => {
            Status::unauthenticated(message)
        }
        AuthError::Denied { .. } | AuthError::NotInScope { .. } => {
            Status::permission_denied(message)
        }
        AuthError::Stale { .. } => Status::unavailable(message),
    }
}

/// The layer; without an authenticator (auth off) it lets everything through.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Option<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    auth: Option<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(auth) = &self.auth else {
            return Either::Right(self.inner.call(request));
        };
        let Some(method) = request.uri().path().strip_prefix(CLIENT_API) else {
            return Either::Right(self.inner.call(request));
        };
        let Some(need) = required_role(method) else {
            return Either::Right(self.inner.call(request));
        };
        match auth.authorize(request.headers(), need) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                tracing::debug!(method, %error, "request refused");
                Either::Left(futures::future::ready(Ok(
                    status_from_auth_error(&error).into_http()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_the_role_its_kind_needs() {
        for (method, role) in [
            ("BootstrapToken", None),
            ("GetServer", Some(Role::Reader)),
            ("ListTools", Some(Role::Reader)),
            ("CallTool", Some(Role::Caller)),
            ("PutServer", Some(Role::Operator)),
            ("SetNodeStatus", Some(Role::Operator)),
            ("AddNode", Some(Role::Admin)),
            ("SaveSnapshot", Some(Role::Admin)),
            ("CreateToken", Some(Role::Admin)),
            ("ListTokens", Some(Role::Admin)),
            ("RevokeToken", Some(Role::Admin)),
            ("SomethingNew", Some(Role::Admin)),
        ] {
            assert_eq!(required_role(method), role, "{method}");
        }
    }
}
