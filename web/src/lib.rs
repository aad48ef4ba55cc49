//! wsscale-web: the live page that every wsscale process serves on its metrics listener
//! (`wsscale serve --metrics-listen`, `wsscale load --metrics-listen`), built into the
//! binary so it works offline, with nothing fetched from elsewhere.
//!
//! The page is static: HTML, one shared script (`assets/live.js`: polling, the
//! disconnected state, number formatting, charts), one script per page (`server.js`,
//! `load.js`: which figures go where), styles, and uPlot. It asks its own listener for
//! [`LIVE_JSON_PATH`] once a second; each process answers that path itself (the server
//! from its sampler thread, the generator from its aggregator), and the page keeps the
//! history of the last [`HISTORY_MINUTES`] minutes it has seen.
//!
//! **Why uPlot** (1.6.32, MIT, `assets/vendor/`, from npm: `npm pack uplot@1.6.32`,
//! tarball sha1 c800a63b432bad692d6d746f44f0882aa73a49ae): 51 KB minified with no
//! dependency, it draws time series on a canvas and is made for data that streams in
//! (`setData` once a second redraws in well under a millisecond for these few hundred
//! points); its licence travels with it (`uPlot.LICENSE`, served at
//! `/assets/uPlot.LICENSE`). The usual alternative, Chart.js, is several times larger and
//! made for static charts; hand-drawn SVG would mean writing axes, ticks and scales
//! ourselves.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Where each listener answers the page's JSON.
pub const LIVE_JSON_PATH: &str = "/api/live";

/// How much history a page keeps and charts (stated in the page's script as well).
pub const HISTORY_MINUTES: u32 = 10;

/// Which process's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `wsscale serve`.
    Server,
    /// `wsscale load`.
    Load,
}

impl Page {
    /// The page's HTML.
    pub fn html(self) -> &'static str {
        match self {
            Page::Server => include_str!("../assets/server.html"),
            Page::Load => include_str!("../assets/load.html"),
        }
    }
}

/// A file the pages load, served at `/assets/NAME`.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file under `/assets/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "live.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/live.js"),
    },
    Asset {
        name: "server.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/server.js"),
    },
    Asset {
        name: "load.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/load.js"),
    },
    Asset {
        name: "live.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/live.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/vendor/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_str!("../assets/vendor/uPlot.LICENSE"),
    },
];

/// Nothing but this listener's own origin: the page loads no script, style, font or image
/// from anywhere else, and talks to no other server.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:";

/// `GET /` (the page) and `GET /assets/NAME`, for a listener's router; the caller adds
/// [`LIVE_JSON_PATH`] and sets [`not_found`] as the fallback.
pub fn routes<S: Clone + Send + Sync + 'static>(page: Page) -> Router<S> {
    Router::new()
        .route("/", get(move || async move { html(page) }))
        .route("/assets/{name}", get(asset))
}

fn html(page: Page) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        page.html(),
    )
        .into_response()
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => {
            let mut response = ([(header::CACHE_CONTROL, "no-cache")], asset.body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
            response
        }
        None => not_found().await,
    }
}

/// The answer to every path a listener does not serve.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A JSON answer that no cache keeps (the figures are of this moment).
pub fn live_json(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages load only what is served here, from this origin, by path.
    #[test]
    fn pages_load_only_their_own_assets() {
        for page in [Page::Server, Page::Load] {
            let html = page.html();
            assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
            for reference in html.split(['"', '\'']).filter(|part| part.starts_with("/assets/")) {
                let name = &reference["/assets/".len()..];
                assert!(
                    ASSETS.iter().any(|asset| asset.name == name),
                    "{page:?} loads {reference}, which is not served"
                );
            }
            assert!(html.contains("/assets/live.js") && html.contains("/assets/uPlot.iife.min.js"));
        }
        let live = ASSETS.iter().find(|asset| asset.name == "live.js").unwrap().body;
        assert!(
            live.contains(&format!("\"{LIVE_JSON_PATH}\"")),
            "live.js polls {LIVE_JSON_PATH}"
        );
        assert!(live.contains(&format!("HISTORY_MINUTES = {HISTORY_MINUTES};")));
    }

    /// The vendored uPlot is the pinned version, with its licence.
    #[test]
    fn vendored_uplot_is_pinned_with_its_licence() {
        let body = |name: &str| ASSETS.iter().find(|asset| asset.name == name).unwrap().body;
        assert!(body("uPlot.iife.min.js").starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"));
        assert!(body("uPlot.LICENSE").contains("The MIT License") && body("uPlot.LICENSE").contains("Leon Sorokin"));
    }
}
