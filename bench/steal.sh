# Sourced by the bench scripts: how much CPU the hypervisor took from this machine while a
# benchmark ran (the "steal" column of /proc/stat). peers.sh watches other processes on the
# machine, but steal is invisible to it; on a shared VM it moves every peer's figures (it has
# been seen at 20-50 % on one CPU here), so a run reports it beside its ratios.

# Prints "steal total" jiffies summed over all CPUs.
steal_ticks() {
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t }' /proc/stat
}

# steal_report BEFORE AFTER: one line with the steal share between two steal_ticks readings.
steal_report() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); dt = y[2] - x[2]
    pct = (dt > 0 ? 100 * (y[1] - x[1]) / dt : 0)
    printf "CPU steal during the run: %.1f %% of the machine%s\n", pct,
      (pct > 3 ? " (above 3 %: the hypervisor took time from the servers, so these ratios are noisy)" : "") }'
}
