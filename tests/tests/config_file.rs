//! The config file end to end, against the real kernel programs: sonde
//! applies `sonde.yaml` (named by `--config` or `SONDE_CONFIG`) under its
//! flags and `SONDE_*` variables.
//!
//! Both servers are Python, so the series are told apart by paths no other
//! test requests.
use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, SERVER_DURATION_COUNT};
use sonde_tests::process::TempDir;
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

const WATCHED: &str = "/config-file-watched";
const UNWATCHED: &str = "/config-file-unwatched";

#[test]
fn the_file_applies_under_flags_and_variables() {
    let (a, b) = (servers::python(), servers::python());
    let dir = TempDir::new("config").unwrap();
    let file = dir.path().join("sonde.yaml");
    // An address this machine does not have: sonde can start only if the
    // harness's --metrics-addr flag wins over the file.
    let config = format!("metrics-addr: \"192.0.2.1:9464\"\nport: [{}]\n", a.port());
    std::fs::write(&file, config).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let b_port = b.port().to_string();

    let cases = [
        // The file's port, named by the flag.
        (vec!["--config".to_owned(), path.clone()], vec![], &a, &b),
        // SONDE_PORT over the file's port, named by the variable.
        (
            vec![],
            vec![
                ("SONDE_CONFIG", path.as_str()),
                ("SONDE_PORT", b_port.as_str()),
            ],
            &b,
            &a,
        ),
    ];
    for (args, env, watched, unwatched) in cases {
        let sonde = Sonde::start_with_env(&args, &env).unwrap_or_else(|e| panic!("{e:?}"));
        // The unwatched server first: had sonde seen it, those events would
        // be read before the ones awaited below.
        let mut to_unwatched = HttpConn::connect(unwatched.port()).unwrap();
        for _ in 0..3 {
            assert_eq!(to_unwatched.get(UNWATCHED).unwrap().status, 404);
        }
        let mut to_watched = HttpConn::connect(watched.port()).unwrap();
        for _ in 0..5 {
            assert_eq!(to_watched.get(WATCHED).unwrap().status, 404);
        }
        let service = watched.service_name();
        let scrape = sonde.await_value(
            SERVER_DURATION_COUNT,
            &names::server(&service, "GET", WATCHED, "404"),
            5.0,
        );
        assert_eq!(
            scrape.sum(SERVER_DURATION_COUNT, &[("http_route", UNWATCHED)]),
            0.0,
            "{}",
            sonde.failure(
                &format!("{args:?} {env:?}: requests to the unwatched port"),
                &scrape
            )
        );
        sonde.stop();
    }
}
