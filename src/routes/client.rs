//! `GET /herald.js`: the first-party browser client (`clients/js/herald.js`),
//! compiled into the binary, so a page can `import { connect } from '/herald.js'`.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

/// The module, as shipped in `clients/js/`.
const CLIENT: &str = include_str!("../../clients/js/herald.js");

/// A validator that changes whenever the module does.
fn etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| {
        // SipHash with fixed keys: the same text always gives the same tag.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        CLIENT.hash(&mut hasher);
        format!("\"{:016x}\"", hasher.finish())
    })
}

pub(super) async fn script(req: HttpRequest) -> HttpResponse {
    let tag = etag();
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == tag));
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, tag))
        // Cacheable, and revalidated cheaply once stale.
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if unchanged {
        return response.finish();
    }
    response
        .content_type("text/javascript; charset=utf-8")
        .body(CLIENT)
}
