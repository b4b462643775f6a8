# bench/summarize.awk -- turn the benchmark samples into the results table.
#
#   awk -v csv=RESULTS.csv -v md=RESULTS.md -f summarize.awk SAMPLES.csv SPEC
#
# SAMPLES.csv: "key,rep,value" lines (after a header line), one per
# measurement of one repetition (bench/run.sh writes it).
# SPEC: one row of the table per line, "|"-separated:
#   section|measurement|key|unit|baseline key|op|target
# A row with a baseline shows the ratio value/baseline, computed within each
# repetition (the runs of one repetition are adjacent in time) and reported
# as the median of those ratios; its target applies to that ratio.  A row
# without a baseline applies its target (if any) to the median value.  Rows
# whose key has no samples are left out.  Writes CSV to csv (overwritten)
# and a Markdown table to md (appended).
BEGIN { FS = "|" }

FNR == NR {
	if (FNR == 1)
		next
	split($0, f, ",")
	val[f[1], f[2]] = f[3]
	if (!((f[1]) in nval))
		nval[f[1]] = 0
	nval[f[1]]++
	if (!(f[2] in isrep)) {
		isrep[f[2]] = 1
		reps[++nreps] = f[2]
	}
	next
}

function sort(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--)
			a[j + 1] = a[j]
		a[j + 1] = t
	}
}

function median(a, n) {
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}

function fmt(x, unit) {
	if (x == "")
		return ""
	if (unit == "msg/s" || unit == "TPS" || unit == "rows")
		return sprintf("%.0f", x)
	if (unit == "ms")
		return sprintf("%.3f", x)
	if (unit == "s")
		return sprintf("%.2f", x)
	if (unit == "MB")
		return sprintf("%.1f", x)
	return sprintf("%.2f", x)
}

function q(s) {
	return "\"" s "\""
}

function met(x, op, t) {
	if (op == "")
		return ""
	if (op == ">=")
		return x >= t ? "yes" : "NO"
	if (op == "<=")
		return x <= t ? "yes" : "NO"
	if (op == "<")
		return x < t ? "yes" : "NO"
	return x > t ? "yes" : "NO"
}

function optext(op) {
	return op == ">=" ? "≥" : op == "<=" ? "≤" : op
}

FNR == 1 {
	print "section,measurement,key,unit,runs,min,median,max,baseline,ratio_min,ratio_median,ratio_max,target,met" > csv
	print "| Measurement | Unit | Min | Median | Max | Compared with | Ratio (median) | Target | Met |" >> md
	print "|---|---|--:|--:|--:|---|--:|---|---|" >> md
}

/^#/ || NF < 7 { next }

{
	section = $1; label = $2; key = $3; unit = $4; base = $5; op = $6; target = $7
	if (!(key in nval))
		next
	n = 0
	for (i = 1; i <= nreps; i++)
		if ((key, reps[i]) in val)
			a[++n] = val[key, reps[i]] + 0
	sort(a, n)
	vmin = a[1]; vmed = median(a, n); vmax = a[n]

	rmin = rmed = rmax = ""
	nr = 0
	if (base != "" && (base in nval)) {
		for (i = 1; i <= nreps; i++)
			if ((key, reps[i]) in val && (base, reps[i]) in val && val[base, reps[i]] + 0 != 0)
				r[++nr] = (val[key, reps[i]] + 0) / (val[base, reps[i]] + 0)
		if (nr > 0) {
			sort(r, nr)
			rmin = r[1]; rmed = median(r, nr); rmax = r[nr]
		}
	}

	ttext = ""
	verdict = ""
	if (op != "") {
		if (base != "") {
			ttext = optext(op) " " target "×"
			if (nr > 0)
				verdict = met(rmed, op, target)
		} else {
			ttext = optext(op) " " target (unit == "×" ? "×" : " " unit)
			verdict = met(vmed, op, target)
		}
	}
	baselabel = base != "" ? label_of[base] : ""

	print q(section) "," q(label) "," key "," q(unit) "," n "," fmt(vmin, unit) "," \
		fmt(vmed, unit) "," fmt(vmax, unit) "," q(baselabel) "," \
		(nr ? sprintf("%.3f", rmin) : "") "," (nr ? sprintf("%.3f", rmed) : "") "," \
		(nr ? sprintf("%.3f", rmax) : "") "," q(ttext) "," verdict >> csv
	print "| " label " | " unit " | " fmt(vmin, unit) " | " fmt(vmed, unit) " | " \
		fmt(vmax, unit) " | " baselabel " | " (nr ? sprintf("%.2f×", rmed) : "") " | " \
		ttext " | " (verdict == "NO" ? "**NO**" : verdict) " |" >> md
	label_of[key] = label
}
