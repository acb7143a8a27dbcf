/*
 * The Slurm declarations carbontrack needs, handed to bindgen by build.rs.
 * Only the installed headers are included: build against the cluster's own
 * headers so that plugin_version matches the running Slurm.
 */
#include <slurm/spank.h>
#include <slurm/slurm_version.h>
/* For the step-id constants SLURM_BATCH_SCRIPT, SLURM_EXTERN_CONT, ... */
#include <slurm/slurm.h>
