# Load benchmark table rows: reads benches/load.sh's rows.tsv (tab-separated:
# scenario, connections, target, round, req/s, p50, p99, TTFB p50, peak RSS kB,
# notes) and prints one markdown row per scenario and target, in the order
# first seen: the medians over the rounds, the highest peak RSS, and for the
# gateway the medians of each round's gateway/nginx ratios of req/s and of
# p99 latency. A ratio within a round compares runs seconds apart; the
# medians of each target's own rounds can pair one target's calm round with
# the other's noisy one.
#
#   awk -F'\t' -f benches/load_table.awk rows.tsv

# The median of list[1..n] ("—" when the values are not numbers).
function median(list, n,    i, j, v, sorted) {
    if (n == 0 || list[1] == "—") return "—"
    for (i = 1; i <= n; i++) sorted[i] = list[i] + 0
    for (i = 2; i <= n; i++) {
        v = sorted[i]
        for (j = i - 1; j >= 1 && sorted[j] > v; j--) sorted[j + 1] = sorted[j]
        sorted[j + 1] = v
    }
    return (n % 2) ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
}
{
    key = $1 SUBSEP $2 SUBSEP $3
    if (!(key in runs)) { order[++keys] = key; label[key] = $1 SUBSEP $2 SUBSEP $3 }
    i = ++runs[key]
    rps[key, i] = $5; p50[key, i] = $6; p99[key, i] = $7; ttfb[key, i] = $8
    if ($9 + 0 > hwm[key] + 0) hwm[key] = $9
    if ($10 != "") notes[key] = notes[key] (notes[key] == "" ? "" : "; ") $10
    by_round[$1 SUBSEP $2 SUBSEP $3 SUBSEP $4] = $5
    p99_by_round[$1 SUBSEP $2 SUBSEP $3 SUBSEP $4] = $7
}
function column(store, key, n,    i, list) {
    for (i = 1; i <= n; i++) list[i] = store[key, i]
    return median(list, n)
}
END {
    for (k = 1; k <= keys; k++) {
        key = order[k]
        split(label[key], f, SUBSEP)
        n = runs[key]
        ratio = ""; ratios = ""; m = 0; delete r
        tail = ""; tails = ""; t_n = 0; delete t_r
        if (f[3] == "gateway") {
            for (i = 1; i <= n; i++) {
                round = f[1] SUBSEP f[2] SUBSEP "gateway" SUBSEP i
                other = f[1] SUBSEP f[2] SUBSEP "nginx" SUBSEP i
                g = by_round[round] + 0; x = by_round[other] + 0
                if (g > 0 && x > 0) { r[++m] = g / x; ratios = ratios sprintf(" %.2f", g / x) }
                g = p99_by_round[round] + 0; x = p99_by_round[other] + 0
                if (g > 0 && x > 0) { t_r[++t_n] = g / x; tails = tails sprintf(" %.2f", g / x) }
            }
            if (m > 0) ratio = sprintf("%.2f", median(r, m))
            if (t_n > 0) tail = sprintf("%.2f", median(t_r, t_n))
            if (t_n > 1) notes[key] = "p99 rounds:" tails (notes[key] == "" ? "" : "; " notes[key])
            if (m > 1) notes[key] = "rounds:" ratios (notes[key] == "" ? "" : "; " notes[key])
        }
        v = column(rps, key, n); rate = (v == "—") ? "—" : sprintf("%.0f", v)
        a = column(p50, key, n); b = column(p99, key, n); t = column(ttfb, key, n)
        rss = (hwm[key] == "") ? "—" : sprintf("%.1f", hwm[key] / 1024)
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
            f[1], f[2], f[3], rate, a, b, t, rss, ratio, tail, notes[key]
    }
}
