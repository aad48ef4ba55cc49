//! Reading the Prometheus text exposition a server's /metrics returns: `compare` samples
//! servers this way, and so do the tests.

/// The first sample of the series named `name` whose labels include every `(key,
/// value)` of `labels`.
pub fn sample_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            wanted.then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_by_name_and_labels() {
        let text = "# HELP x y\nwsscale_connections_active{mode=\"tasks\"} 12\n\
                    wsscale_connections_closed_total{mode=\"tasks\",reason=\"error\"} 3\n\
                    wsscale_connections_closed_total{mode=\"tasks\",reason=\"shutdown\"} 4\nplain 1.5\n";
        assert_eq!(sample_value(text, "wsscale_connections_active", &[]), Some(12.0));
        assert_eq!(
            sample_value(text, "wsscale_connections_closed_total", &[("reason", "shutdown")]),
            Some(4.0)
        );
        assert_eq!(sample_value(text, "plain", &[]), Some(1.5));
        assert_eq!(
            sample_value(text, "wsscale_connections", &[]),
            None,
            "names match whole"
        );
        assert_eq!(
            sample_value(text, "wsscale_connections_active", &[("mode", "threads")]),
            None
        );
    }
}
