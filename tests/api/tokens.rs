//! Where tokens are read and which ones are refused.

use actix_web::cookie::Cookie;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_token_is_read_from_the_header_the_cookie_or_the_query() {
    let server = spawn(&[]).await;
    let token = user_token("alice", &[]);
    let by_header = server
        .client()
        .get(server.url("/api/events"))
        .bearer_auth(&token);
    let by_cookie = server
        .client()
        .get(server.url("/api/events"))
        .cookie(Cookie::new("herald_token", token.clone()));
    let by_query = server
        .client()
        .get(server.url(&format!("/api/events?token={token}")));
    for request in [by_header, by_cookie, by_query] {
        let mut stream = Sse::open(request).await;
        assert_eq!(stream.status, 200);
        assert_eq!(data(&stream.next().await)["user"], "alice");
    }
}

#[actix_web::test]
async fn the_first_token_found_wins_header_then_cookie_then_query() {
    let server = spawn(&[]).await;
    let good = user_token("alice", &[]);
    // A bad header is not rescued by a good cookie or query token.
    let request = server
        .client()
        .get(server.url(&format!("/api/events?token={good}")))
        .bearer_auth("not-a-token")
        .cookie(Cookie::new("herald_token", good.clone()));
    assert_eq!(Answer::of(request.send()).await.status, 401);
    // A good cookie wins over a bad query token.
    let request = server
        .client()
        .get(server.url("/api/events?token=garbage"))
        .cookie(Cookie::new("herald_token", good.clone()));
    assert_eq!(Answer::of(request.send()).await.status, 200);
}

#[actix_web::test]
async fn bad_tokens_get_401_with_the_contract_codes() {
    let server = spawn(&[]).await;
    let now = now();
    let other_secret = encode(
        &Header::default(),
        &json!({"sub": "a", "exp": now + 60}),
        &EncodingKey::from_secret(b"another-secret-another-secret-123"),
    )
    .unwrap();
    let unsigned = {
        let header = base64url(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = base64url(&json!({"sub": "a", "exp": now + 60}).to_string());
        format!("{header}.{claims}.")
    };
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "a", "exp": now + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        ("garbage", Some("garbage".into()), "invalid_token"),
        (
            "expired",
            Some(token(json!({"sub": "a", "exp": now - 60}))),
            "token_expired",
        ),
        ("wrong secret", Some(other_secret), "invalid_token"),
        ("alg none", Some(unsigned), "invalid_token"),
        ("other HMAC algorithm", Some(hs384), "invalid_token"),
        ("no exp", Some(token(json!({"sub": "a"}))), "invalid_token"),
        (
            "no sub",
            Some(token(json!({"exp": now + 60}))),
            "invalid_token",
        ),
        (
            "empty sub",
            Some(token(json!({"sub": "", "exp": now + 60}))),
            "invalid_token",
        ),
        (
            "sub with a line break",
            Some(token(json!({"sub": "a\nb", "exp": now + 60}))),
            "invalid_token",
        ),
        (
            "overlong sub",
            Some(token(json!({"sub": "u".repeat(257), "exp": now + 60}))),
            "invalid_token",
        ),
        (
            "not yet valid",
            Some(token(
                json!({"sub": "a", "exp": now + 600, "nbf": now + 300}),
            )),
            "invalid_token",
        ),
        (
            "roles not an array",
            Some(token(
                json!({"sub": "a", "exp": now + 60, "roles": "admin"}),
            )),
            "invalid_token",
        ),
        (
            "bad channel pattern",
            Some(token(
                json!({"sub": "a", "exp": now + 60, "channels": ["a b"]}),
            )),
            "invalid_token",
        ),
    ];
    for (case, token, code) in cases {
        let mut request = server.client().get(server.url("/api/events"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = Answer::of(request.send()).await;
        assert_eq!(answer.status, 401, "{case}");
        assert_eq!(answer.json()["error"], code, "{case}: {answer}");
        assert!(answer.json()["message"].is_string(), "{case}");
        assert!(
            answer
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer")),
            "{case}: WWW-Authenticate: Bearer"
        );
    }
}

#[actix_web::test]
async fn leeway_accepts_a_token_that_just_expired() {
    let server = spawn(&[("JWT_LEEWAY_SECS", "30")]).await;
    let just_expired = token(json!({"sub": "a", "exp": now() - 10}));
    assert_eq!(server.get_events(&just_expired, "").await.status, 200);
}

#[actix_web::test]
async fn a_stream_admitted_by_the_leeway_lasts_until_exp_plus_the_leeway() {
    let server = spawn(&[("JWT_LEEWAY_SECS", "3")]).await;
    let exp = now() - 1;
    let (mut stream, _) = server
        .subscribe(&token(json!({"sub": "a", "exp": exp})), "")
        .await;
    let frames = stream.until_end().await;
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(names, ["token-expiring", "token-expired"]);
    assert!(
        now() >= exp + 3,
        "the stream ended at {}, before exp + leeway ({})",
        now(),
        exp + 3
    );
}

#[actix_web::test]
async fn audience_and_issuer_are_required_when_configured() {
    let server = spawn(&[
        ("JWT_AUDIENCE", "herald"),
        ("JWT_ISSUER", "https://auth.example"),
    ])
    .await;
    let exp = now() + 60;
    let cases = [
        (
            json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "https://auth.example"}),
            200,
        ),
        (
            json!({"sub": "a", "exp": exp, "aud": ["other", "herald"], "iss": "https://auth.example"}),
            200,
        ),
        (
            json!({"sub": "a", "exp": exp, "iss": "https://auth.example"}),
            401,
        ),
        (
            json!({"sub": "a", "exp": exp, "aud": "other", "iss": "https://auth.example"}),
            401,
        ),
        (json!({"sub": "a", "exp": exp, "aud": "herald"}), 401),
        (
            json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "https://evil.example"}),
            401,
        ),
    ];
    for (claims, expected) in cases {
        let answer = server.get_events(&token(claims.clone()), "").await;
        assert_eq!(answer.status, expected, "{claims}");
    }
}

#[actix_web::test]
async fn es256_tokens_verify_with_the_public_key_and_hs_tokens_made_from_it_do_not() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public = format!("{fixtures}/es256-public.pem");
    let mut config = config(&[("JWT_ALGORITHM", "ES256"), ("JWT_PUBLIC_KEY_FILE", &public)]);
    config.jwt.secret = None;
    let server = spawn_with(config).await;
    let private = std::fs::read(format!("{fixtures}/es256-private.pem")).unwrap();
    let claims = json!({"sub": "alice", "exp": now() + 60});
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(server.get_events(&es, "").await.status, 200);

    // The classic confusion attack: HMAC-sign with the public key as the secret.
    let public_pem = std::fs::read(&public).unwrap();
    let swapped = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let answer = server.get_events(&swapped, "").await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (401, Some("invalid_token"))
    );
}

#[actix_web::test]
async fn a_channel_outside_the_token_claim_is_forbidden_and_opens_no_stream() {
    let server = spawn(&[]).await;
    let token = user_token("alice", &["news", "team-42.*"]);
    for (query, expected) in [
        ("channel=news", 200),
        ("channel=team-42.alerts", 200),
        ("channel=team-43.alerts", 403),
        ("channels=news,secret", 403),
        ("channel=team-42", 403),
    ] {
        let answer = server.get_events(&token, query).await;
        assert_eq!(answer.status, expected, "{query}: {answer}");
        if expected == 403 {
            assert_eq!(answer.json()["error"], "forbidden");
        }
    }
    let no_claim = token_without_channels("bob");
    assert_eq!(
        server.get_events(&no_claim, "channel=news").await.status,
        403,
        "no claim: no named channels"
    );
    server.wait_for_connections(0).await;
}

fn token_without_channels(sub: &str) -> String {
    token(json!({"sub": sub, "exp": now() + 60}))
}

fn base64url(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A stand-in identity provider: serves a key set, counts its fetches.
struct KeyServer {
    port: u16,
    keys: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

impl KeyServer {
    async fn start(keys: &str) -> Self {
        use actix_web::{web, App, HttpResponse, HttpServer};
        let shared = std::sync::Arc::new(std::sync::Mutex::new(keys.to_owned()));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (shared.clone(), fetches.clone());
        let server = HttpServer::new(move || {
            let (served, counted) = (served.clone(), counted.clone());
            App::new().route(
                "/jwks.json",
                web::get().to(move || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    async move {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(body)
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            port,
            keys: shared,
            fetches,
            handle,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An ES256 token for `sub` naming key `kid`, signed with `private_pem`.
fn es256_token(sub: &str, kid: &str, private_pem: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(format!(
            "{}/tests/fixtures/{private_pem}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now() + 600}), &key).unwrap()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Asks until the answer has `status` (the server fetches keys by itself).
async fn status_becomes(server: &TestServer, token: &str, status: u16) -> Answer {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let answer = server.get_events(token, "").await;
        if answer.status == status || std::time::Instant::now() > deadline {
            return answer;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn identity_provider_keys_are_fetched_rotated_and_kept_through_an_outage() {
    let provider = KeyServer::start(&fixture("jwks-key-1.json")).await;
    let server = spawn(&[
        ("JWT_ALGORITHM", "ES256"),
        ("JWT_JWKS_URL", &provider.url()),
        ("JWT_JWKS_REFETCH_SECS", "1"),
    ])
    .await;
    let first = es256_token("alice", "key-1", "es256-private.pem");
    assert_eq!(status_becomes(&server, &first, 200).await.status, 200);

    // The provider rotates to a new key: picked up without a restart.
    *provider.keys.lock().unwrap() = fixture("jwks-rotated.json");
    let rotated = es256_token("alice", "key-2", "es256-rotated-private.pem");
    assert_eq!(status_becomes(&server, &rotated, 200).await.status, 200);

    // Made-up key ids fetch the set at most once per interval.
    let before = provider.fetches();
    for _ in 0..5 {
        let unknown = es256_token("alice", "no-such-key", "es256-private.pem");
        let answer = server.get_events(&unknown, "").await;
        assert_eq!(answer.status, 401);
        assert_eq!(answer.json()["error"], "invalid_token");
    }
    assert!(
        provider.fetches() <= before + 1,
        "{} fetches",
        provider.fetches() - before
    );

    // The provider goes away: cached keys still verify.
    provider.handle.stop(false).await;
    assert_eq!(server.get_events(&first, "").await.status, 200);
    // The algorithm stays pinned: an HS256 token is refused.
    assert_eq!(
        server
            .get_events(&user_token("alice", &[]), "")
            .await
            .status,
        401
    );
}

#[actix_web::test]
async fn before_any_provider_key_was_fetched_tokens_get_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = spawn(&[
        ("JWT_ALGORITHM", "ES256"),
        (
            "JWT_JWKS_URL",
            &format!("http://127.0.0.1:{closed}/jwks.json"),
        ),
    ])
    .await;
    let answer = server
        .get_events(&es256_token("alice", "key-1", "es256-private.pem"), "")
        .await;
    assert_eq!(answer.status, 503, "{answer}");
    assert_eq!(answer.json()["error"], "unavailable");
}
