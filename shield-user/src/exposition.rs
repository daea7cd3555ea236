//! The `/metrics` exposition format, chosen per scrape.
//!
//! `metrics::render` writes OpenMetrics text (prometheus-client's encoder): a counter family
//! is named without its `_total` suffix in `# HELP` / `# TYPE` and the text ends with
//! `# EOF`. Prometheus asks for that format (its `Accept` header lists
//! `application/openmetrics-text`) and gets it under its own content type. Any other client
//! (`curl`, `promtool check metrics`, older scrapers) gets the classic Prometheus text
//! format 0.0.4, in which a counter's `# HELP` and `# TYPE` carry the sample name
//! (`shield_packets_total`) and there is no `# EOF`: served as OpenMetrics under the 0.0.4
//! content type, every counter's metadata named a family no sample belongs to, and
//! `promtool check metrics` reported each counter as having no help text.

/// Content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when an `Accept` header asks for OpenMetrics (listed with a non-zero `q`).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            return false;
        }
        // `q=0` means "not acceptable"; a q that does not parse counts as 1 (RFC 9110's default).
        !parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().ok() == Some(0.0)
            })
        })
    })
}

/// The content type and body for a scrape whose `Accept` header is `accept`, from
/// `openmetrics`, the OpenMetrics text `metrics::render` made.
pub fn negotiate(accept: Option<&str>, openmetrics: &str) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics.to_owned())
    } else {
        (CLASSIC, to_classic(openmetrics))
    }
}

/// OpenMetrics text (counters and gauges, as `metrics::render` writes them) to the classic
/// Prometheus text format: a counter family's `# HELP` and `# TYPE` take the `_total` name
/// of its samples, `unknown` becomes `untyped`, and `# UNIT` and `# EOF` go. Samples are
/// left as they are (the two formats write them alike for these types).
pub fn to_classic(openmetrics: &str) -> String {
    // `# HELP` comes before `# TYPE`, so the counter families are found first.
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| kind.trim() == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| line.strip_prefix(tag).map(|rest| (tag, rest)));
        match meta.and_then(|(tag, rest)| rest.split_once(' ').map(|(n, t)| (tag, n, t))) {
            Some((tag, name, text)) if counters.contains(name) && !name.ends_with("_total") => {
                out.push_str(&format!("{tag}{name}_total {text}\n"));
            }
            Some(("# TYPE ", name, "unknown")) => {
                out.push_str(&format!("# TYPE {name} untyped\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP shield_packets Packets judged.\n\
# TYPE shield_packets counter\n\
shield_packets_total{iface=\"eth0\",rule=\"api\",reason=\"pass\"} 3\n\
# HELP shield_active_bans Bans in force.\n\
# TYPE shield_active_bans gauge\n\
shield_active_bans{iface=\"eth0\"} 1\n\
# HELP shield_app_errors Bad app socket requests.\n\
# TYPE shield_app_errors counter\n\
shield_app_errors_total 0\n\
# HELP shield_last_reload_seconds Duration of the last reload.\n\
# TYPE shield_last_reload_seconds gauge\n\
# UNIT shield_last_reload_seconds seconds\n\
shield_last_reload_seconds 0.025\n\
# TYPE shield_misc unknown\n\
shield_misc 1\n\
# EOF\n";

    #[test]
    fn counters_are_named_as_their_samples_and_eof_goes() {
        assert_eq!(
            to_classic(OM),
            "# HELP shield_packets_total Packets judged.\n\
# TYPE shield_packets_total counter\n\
shield_packets_total{iface=\"eth0\",rule=\"api\",reason=\"pass\"} 3\n\
# HELP shield_active_bans Bans in force.\n\
# TYPE shield_active_bans gauge\n\
shield_active_bans{iface=\"eth0\"} 1\n\
# HELP shield_app_errors_total Bad app socket requests.\n\
# TYPE shield_app_errors_total counter\n\
shield_app_errors_total 0\n\
# HELP shield_last_reload_seconds Duration of the last reload.\n\
# TYPE shield_last_reload_seconds gauge\n\
shield_last_reload_seconds 0.025\n\
# TYPE shield_misc untyped\n\
shield_misc 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_format() {
        // What Prometheus 2.x sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom), OM), (OPENMETRICS, OM.to_owned()));
        for other in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4"),
            Some("application/openmetrics-text;q=0, text/plain"),
            Some("application/json"),
        ] {
            let (kind, body) = negotiate(other, OM);
            assert_eq!(kind, CLASSIC, "{other:?}");
            assert!(!body.contains("# EOF"), "{other:?}: {body}");
            assert!(
                body.contains("# TYPE shield_packets_total counter"),
                "{body}"
            );
        }
        assert!(wants_openmetrics(Some(
            "Application/OpenMetrics-Text; q=0.5"
        )));
    }

    #[test]
    fn the_daemons_own_rendering_converts_cleanly() {
        // Every sample name of the classic text has its own # HELP and # TYPE.
        let src = crate::metrics::Sources {
            bpffs: std::env::temp_dir().join("shield-exposition-none"),
            ifaces: Vec::new(),
            counters: Default::default(),
            app: Default::default(),
        };
        let om = crate::metrics::render(&src);
        assert!(om.ends_with("# EOF\n"), "{om}");
        let classic = to_classic(&om);
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        for line in classic.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                assert!(typed.contains(name), "{name} has no # TYPE:\n{classic}");
                assert!(helped.contains(name), "{name} has no # HELP:\n{classic}");
            }
        }
        assert!(typed.contains("shield_reloads_total"), "{classic}");
    }
}
