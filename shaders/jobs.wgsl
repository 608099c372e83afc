// Batched dispatch: a kernel's jobs (the layers or node sets of many
// networks) are a flat `jobs: array<u32>`, `stride` words a job, word 0
// the job's first work item (a prefix sum over the jobs). A workgroup finds
// its job by binary search, so one dispatch serves every job of a batch.
// Prepended to every kernel.

const NONE: u32 = 0xffffffffu;

struct Dispatch {
    total: u32,  // work items (workgroups) over all jobs
    count: u32,  // jobs
}

// Linear index of a workgroup in a 2-D dispatch (x up to 65535, then y).
fn group_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// The job whose work items contain `item`.
fn find_job(item: u32, count: u32, stride: u32) -> u32 {
    var lo = 0u;
    var hi = count;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (jobs[mid * stride] <= item) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}
