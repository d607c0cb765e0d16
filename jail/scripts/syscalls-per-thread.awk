# Counts syscalls per thread in `strace -f -qq -o FILE` output ("TID call(args) = ret").
# Threads are named by their prctl(PR_SET_NAME, "..."); the first tid is "main".
# Usage: awk -f syscalls-per-thread.awk FILE | sort
$2 ~ /^</ { next }   # the "<... resumed>" half of an interrupted line
{ tid = $1; call = $2; sub(/\(.*/, "", call) }
first == "" { first = tid }
call == "prctl" && /PR_SET_NAME/ {
    n = $0; sub(/.*PR_SET_NAME, "/, "", n); sub(/".*/, "", n); name[tid] = n
}
{ who = (tid in name) ? name[tid] : (tid == first ? "main" : "tid-" tid); seen[who " " call]++ }
END { for (k in seen) print k, seen[k] }
