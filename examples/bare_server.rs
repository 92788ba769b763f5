//! The baseline for the load benchmark (`benches/load/run.sh`): actix-web + rustls, the same TLS
//! configuration and certificate resolver as imagegate, answering every `POST /validate` with a
//! fixed AdmissionReview. Whatever imagegate costs beyond this is its own work.
//!
//! `cargo run --release --example bare_server -- ADDR CERT_PEM KEY_PEM [BODY_FILE]`
//!
//! With `BODY_FILE`, it answers with those bytes instead, so that it can send exactly what
//! imagegate sends and the comparison measures imagegate's work, not the size of its answer.

use actix_web::{App, HttpResponse, HttpServer, web};

const BODY: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"e1aa2412-c6b3-4a14-b7ba-403276450ee7","allowed":true}}"#;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_server ADDR CERT_PEM KEY_PEM";
    let addr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let cert = std::fs::read_to_string(args.next().ok_or_else(|| anyhow::anyhow!(usage))?)?;
    let key = std::fs::read_to_string(args.next().ok_or_else(|| anyhow::anyhow!(usage))?)?;
    let body: &'static str = match args.next() {
        Some(file) => Box::leak(std::fs::read_to_string(file)?.into_boxed_str()),
        None => BODY,
    };
    let resolver = imagegate::tls::CertResolver::new();
    resolver.set_pem(&cert, &key)?;
    let config = imagegate::tls::server_config(resolver);
    HttpServer::new(move || {
        App::new()
            .app_data(web::PayloadConfig::new(imagegate::http::MAX_BODY_BYTES))
            .route(
                "/validate",
                web::post().to(move |_body: web::Bytes| async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }),
            )
    })
    .keep_alive(imagegate::http::KEEP_ALIVE)
    .bind_rustls_0_23(addr, config)?
    .run()
    .await?;
    Ok(())
}
