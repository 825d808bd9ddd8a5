//! LakeSync.
