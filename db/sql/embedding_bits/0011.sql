-- The SQL text of the binary-quantised form of a vector (migration 0011): one bit per dimension, the sign of the
-- coordinate after the model's centre is subtracted (embedding_models.binary_centre, the mean of its vectors when
-- its bit index was built; NULL: no centring).
--
--   embedding_bits('embedding', 512, centre) -> binary_quantize(embedding::halfvec(512) - '[...]'::halfvec(512))::bit(512)
--
-- The bit index of a model (build_embedding_index) is made on this expression of the column `embedding`, and the
-- search functions order by `embedding_bits('e.embedding', ...) <~> embedding_bits('$1', ...)`: the same text with
-- the same centre, so that the planner matches the partial expression index. The centre only changes which
-- candidates the Hamming scan brings (SCALING.md section 2: recall at 200 candidates 0.95 -> 0.98 on CLIP-like
-- vectors); the re-ranking is on the exact halfvec cosine, so results stay right whatever the centre is.
CREATE OR REPLACE FUNCTION embedding_bits(source text, dimension integer, centre halfvec) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = public, pg_temp
AS $$
    SELECT CASE WHEN centre IS NULL
                THEN format('binary_quantize(%1$s::halfvec(%2$s))::bit(%2$s)', source, dimension)
                ELSE format('binary_quantize(%1$s::halfvec(%2$s) - %3$L::halfvec(%2$s))::bit(%2$s)',
                            source, dimension, centre::text) END
$$;
REVOKE ALL ON FUNCTION embedding_bits(text, integer, halfvec) FROM PUBLIC;
