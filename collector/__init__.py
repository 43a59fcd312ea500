"""netmon-collector: the provincial center that agents push to and that scrapes the others (docs/collector.md)."""
