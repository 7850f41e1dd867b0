//! Tokens: where they are read from, how they are validated, and the
//! extractors that protect a handler by its signature.
//!
//! A handler that takes [`Identity`] only runs for a valid token; one that
//! takes [`Admin`] only for a token with the `admin` role.
//!
//! - [`keys`]: the keys that check and sign tokens (an HS256 secret, a PEM
//!   public key, an identity provider's key set) and their one algorithm.
//! - [`verify`]: the [`Verifier`]: claim validation, the [`Identity`] a
//!   valid token gives, and minting.
//! - [`extract`]: where a request's token is read (Bearer header, cookie,
//!   query), the `Origin` rule for writes, and the actix extractors.

mod extract;
mod keys;
mod verify;

use std::sync::Arc;

use crate::revocations::Revocations;

pub(crate) use extract::not_revoked;
pub use extract::{origin_is_trusted, Admin, TokenSource};
pub use verify::{Identity, Verifier};
// Used only inside `auth` today; re-exported so that every `crate::auth::X`
// path of the single-file module still resolves.
#[allow(unused_imports)]
pub use extract::{find_token, form_urlencoded_value};
#[allow(unused_imports)]
pub use verify::{Claims, ADMIN_ROLE};

/// What the extractors need, registered once as app data.
pub struct Auth {
    /// Checks every request's token.
    pub verifier: Verifier,
    /// The cookie a token may come in (`AUTH_COOKIE_NAME`).
    pub cookie_name: String,
    /// Origins besides the server's own that may use cookie auth on writes.
    pub allowed_origins: Vec<String>,
    /// Users and tokens cut off by `POST /api/revoke`.
    pub revocations: Arc<Revocations>,
}
