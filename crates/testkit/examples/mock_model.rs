//! Runs the mock model server by hand, e.g. to record an agent CLI's output:
//! `cargo run -p viberglass-testkit --example mock_model -- run 'printf x > F' | fail 401`.

use viberglass_testkit::model::{MockModel, Step};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let script = match args.first().map(String::as_str) {
        Some("fail") => {
            vec![Step::Fail { status: args.get(1).and_then(|s| s.parse().ok()).unwrap_or(401), no_retry_header: false }]
        }
        Some("run") => {
            vec![Step::Run(args.get(1).cloned().unwrap_or_default()), Step::Text("Done: wrote the file.".into())]
        }
        _ => vec![Step::Text("Nothing to do.".into())],
    };
    let model = MockModel::start(script).await;
    println!("{}", model.anthropic_url());
    tokio::signal::ctrl_c().await.ok();
}
