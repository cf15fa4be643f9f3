"""Pure rules with no I/O: paths, the planner, flow mode's schedule, chunks, reports and
write blame. Everything here is a function of its arguments, so it is tested without
files, Redis or processes."""
