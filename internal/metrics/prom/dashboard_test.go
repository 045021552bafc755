package prom_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// The dashboard ships three times: deploy/monitoring and each chart (Helm
// reads files inside its chart only).
var dashboardCopies = []string{
	"deploy/monitoring/cephcsi-dashboard.json",
	"charts/ceph-csi-rbd/dashboards/cephcsi.json",
	"charts/ceph-csi-cephfs/dashboards/cephcsi.json",
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// dashboard is the part of a Grafana dashboard that names series.
type dashboard struct {
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t testing.TB) (dashboard, []string) {
	t.Helper()
	var d dashboard
	data, err := os.ReadFile(filepath.Join(repoRoot(), dashboardCopies[0]))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardCopies[0], err)
	}
	var queries []string
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			queries = append(queries, v.Definition)
		}
	}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries = append(queries, tg.Expr)
		}
	}
	return d, queries
}

var (
	strLit    = regexp.MustCompile(`"(\\.|[^"\\])*"`)
	braces    = regexp.MustCompile(`\{[^}]*\}`)
	ranges    = regexp.MustCompile(`\[[^\]]*\]`)
	grouping  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	selector  = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}`)
	matcher   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)`)
	promWords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
)

// metricNames returns the metric names a PromQL expression (or a Grafana
// label_values() query) reads.
func metricNames(expr string) []string {
	e := strLit.ReplaceAllString(expr, `""`)
	e = braces.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	e = grouping.ReplaceAllString(e, " ")
	var names []string
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		word := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " ")
		if strings.HasPrefix(rest, "(") || slices.Contains(promWords, word) {
			continue // a function, or an operator
		}
		if loc[0] > 0 && strings.ContainsAny(e[loc[0]-1:loc[0]], "0123456789.") {
			continue // part of a number
		}
		if strings.HasPrefix(expr, "label_values(") && !strings.HasPrefix(rest, ",") {
			continue // the label of label_values(metric, label)
		}
		names = append(names, word)
	}
	return names
}

// matchedLabels returns, per metric name, the label names its selectors
// match on.
func matchedLabels(expr string) map[string][]string {
	out := map[string][]string{}
	for _, m := range selector.FindAllStringSubmatch(strLitKeepQuotes(expr), -1) {
		for _, l := range matcher.FindAllStringSubmatch(m[2], -1) {
			out[m[1]] = append(out[m[1]], l[1])
		}
	}
	return out
}

// strLitKeepQuotes empties string literals (a regex may hold a brace).
func strLitKeepQuotes(s string) string { return strLit.ReplaceAllString(s, `""`) }

func TestMetricNamesOfQueries(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (grpc_method) (rate(cephcsi_grpc_requests_total{driver=~"$driver"}[$__rate_interval]))`:   {"cephcsi_grpc_requests_total"},
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="{y}"}[5m])))`:                             {"a_bucket"},
		`process_resident_memory_bytes * on (instance) group_left (driver, version) cephcsi_build_info{}`: {"process_resident_memory_bytes", "cephcsi_build_info"},
		`min by (instance) (csi_liveness)`:           {"csi_liveness"},
		`label_values(cephcsi_build_info, driver)`:   {"cephcsi_build_info"},
		`sum(rate(x_total[1m])) / 2 > bool 0.5e3`:    {"x_total"},
		`up{job="a"} unless on (instance) down_nope`: {"up", "down_nope"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", expr, got, want)
		}
	}
	got := matchedLabels(`sum(rate(a{driver=~"$d", result="error"}[1m])) + b{job!="x"}`)
	if !slices.Equal(got["a"], []string{"driver", "result"}) || !slices.Equal(got["b"], []string{"job"}) {
		t.Errorf("matched labels %v", got)
	}
}

// The copies are the same file, and every panel queries something.
func TestDashboardCopiesAgree(t *testing.T) {
	d, queries := loadDashboard(t)
	if d.Title == "" || len(queries) < 10 {
		t.Fatalf("dashboard %q has %d queries", d.Title, len(queries))
	}
	first, _ := os.ReadFile(filepath.Join(repoRoot(), dashboardCopies[0]))
	for _, c := range dashboardCopies[1:] {
		data, err := os.ReadFile(filepath.Join(repoRoot(), c))
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != string(first) {
			t.Errorf("%s differs from %s", c, dashboardCopies[0])
		}
	}
	for _, q := range queries {
		if len(metricNames(q)) == 0 {
			t.Errorf("query names no metric: %s", q)
		}
	}
}
