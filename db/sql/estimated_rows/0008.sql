-- The planner's estimate of the rows a query returns (EXPLAIN, nothing is executed). search_photos_filtered()
-- asks it how many photos its filters leave, to choose between exact distances and the HNSW scan. VOLATILE
-- because EXPLAIN may not run inside a STABLE function; it runs the text it is given, so nobody but the owner
-- may call it (no grant to PUBLIC or the reader role).
CREATE OR REPLACE FUNCTION estimated_rows(query text) RETURNS numeric
LANGUAGE plpgsql VOLATILE
SET search_path = public, pg_temp
AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || query INTO plan;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric;
END $$;
REVOKE ALL ON FUNCTION estimated_rows(text) FROM PUBLIC;
