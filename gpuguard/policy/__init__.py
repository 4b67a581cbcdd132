"""The pure policy core shared by every gpuguard service.

Policy model and loading, the MIG catalog, runtime recognition, what applies to an object (`resolve`), the mutation
plan and validation. Nothing here does I/O: no network, files, logging or clocks. Callers read and write; this
package decides. The import-linter contracts in pyproject.toml keep it that way.
"""
