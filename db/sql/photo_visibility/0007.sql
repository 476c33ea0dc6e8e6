-- What a viewer in `region` may know of one photo: 'visible'; 'restricted' (it would be visible but for the
-- minors law: the API answers 451 with the disclaimer); 'hidden' (not indexed, private or not approved) or
-- 'missing'. The rule itself is photo_is_visible().
CREATE OR REPLACE FUNCTION photo_visibility(p_photo_id uuid, region text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT CASE
        WHEN p.id IS NULL THEN 'missing'
        WHEN photo_is_visible(p, NOT region_is_restricted(region)) THEN 'visible'
        WHEN photo_is_visible(p, true) THEN 'restricted'
        ELSE 'hidden'
    END
    FROM (SELECT 1) one LEFT JOIN photos p ON p.id = p_photo_id
$$;
REVOKE ALL ON FUNCTION photo_visibility(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION photo_visibility(uuid, text) TO withsense_reader;
