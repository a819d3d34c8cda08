"""Study rule files: loading, compiling to Polars, screening, explaining. (Being built; see issue 2.)"""
